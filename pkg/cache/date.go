package cache

import (
	"bytes"
	"time"
)

// HTTP dates (RFC 9110 section 5.6.7): the IMF-fixdate every sender
// writes, and the obsolete RFC 850 and asctime forms every recipient must
// still read. Anything else is not a date: an Expires that is not one
// means the response is already stale (RFC 9111 section 5.3), so a
// lenient parser that reads "2:01:18" or "UTC" as a date would keep
// responses the origin meant to expire. Names are read without regard
// to case, as RFC 9110 asks recipients to be robust where they can.

var (
	weekdays = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}
	longDays = [7]string{"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"}
	months   = [12]string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}
)

// parseHTTPDate reads v as one of the three HTTP date forms; ok is false
// for anything else.
func parseHTTPDate(v []byte) (t time.Time, ok bool) {
	switch {
	case len(v) == 29 && v[3] == ',':
		// Sun, 06 Nov 1994 08:49:37 GMT
		if !name(v[:3], weekdays[:]) || v[4] != ' ' || v[7] != ' ' || v[11] != ' ' || v[16] != ' ' || v[25] != ' ' || !bytes.EqualFold(v[26:], []byte("GMT")) {
			return t, false
		}
		return build(v[8:11], digits(v[5:7]), digits(v[12:16]), v[17:25])
	case len(v) == 24 && v[3] == ' ':
		// Sun Nov  6 08:49:37 1994
		if !name(v[:3], weekdays[:]) || v[7] != ' ' || v[10] != ' ' || v[19] != ' ' {
			return t, false
		}
		day := v[8:10]
		if day[0] == ' ' {
			day = day[1:]
		}
		return build(v[4:7], digits(day), digits(v[20:24]), v[11:19])
	}
	// Sunday, 06-Nov-94 08:49:37 GMT
	comma := bytes.IndexByte(v, ',')
	if comma < 0 || len(v) != comma+24 || !name(v[:comma], longDays[:]) {
		return t, false
	}
	r := v[comma+1:]
	if r[0] != ' ' || r[3] != '-' || r[7] != '-' || r[10] != ' ' || r[19] != ' ' || !bytes.EqualFold(r[20:], []byte("GMT")) {
		return t, false
	}
	year := digits(r[8:10])
	if year < 0 {
		return t, false
	}
	// A two-digit year more than 50 years ahead is the most recent past
	// year with those digits (RFC 9110 section 5.6.7).
	now := time.Now().UTC().Year()
	year += now - now%100
	if year > now+50 {
		year -= 100
	}
	return build(r[4:7], digits(r[1:3]), year, r[11:19])
}

// build makes the time of a month name, day, year and "hh:mm:ss".
func build(month []byte, day, year int, hms []byte) (time.Time, bool) {
	m := -1
	for i, n := range months {
		if bytes.EqualFold(month, []byte(n)) {
			m = i
		}
	}
	if m < 0 || day < 1 || day > 31 || year < 0 || len(hms) != 8 || hms[2] != ':' || hms[5] != ':' {
		return time.Time{}, false
	}
	h, mi, s := digits(hms[:2]), digits(hms[3:5]), digits(hms[6:])
	if h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 60 {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(m+1), day, h, mi, s, 0, time.UTC)
	if t.Day() != day {
		return time.Time{}, false // 31 Feb
	}
	return t, true
}

// digits reads a run of ASCII digits; -1 if there are none or another
// byte.
func digits(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// name reports whether b is one of names, without regard to case.
func name(b []byte, names []string) bool {
	for _, n := range names {
		if bytes.EqualFold(b, []byte(n)) {
			return true
		}
	}
	return false
}

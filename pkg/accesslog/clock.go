package accesslog

import (
	"sync/atomic"
	"time"
)

// A line's time is most of what it costs to format: the part up to the
// second is formatted once a second, per format, and only the fraction
// is formatted per line.

// stamp is one second's formatted times.
type stamp struct {
	sec              int64
	text, json, comb []byte // up to the second ("2006-01-02T15:04:05")
	zone, jsonZone   []byte // after the fraction ("Z", "+0100"; "Z", "+01:00")
}

var clock atomic.Pointer[stamp]

// stampOf is t's second, formatted.
func stampOf(t time.Time) *stamp {
	sec := t.Unix()
	if s := clock.Load(); s != nil && s.sec == sec {
		return s
	}
	s := &stamp{
		sec:      sec,
		text:     t.AppendFormat(nil, "2006-01-02T15:04:05"),
		json:     t.AppendFormat(nil, "2006-01-02T15:04:05"),
		comb:     t.AppendFormat(nil, "02/Jan/2006:15:04:05 -0700"),
		zone:     t.AppendFormat(nil, "Z0700"),
		jsonZone: t.AppendFormat(nil, "Z07:00"),
	}
	clock.Store(s)
	return s
}

// appendTextTime is t as hclog's text format writes it:
// 2006-01-02T15:04:05.000Z0700.
func appendTextTime(b []byte, t time.Time) []byte {
	s := stampOf(t)
	b = append(b, s.text...)
	b = appendFraction(b, t.Nanosecond()/1e6, 3)
	return append(b, s.zone...)
}

// appendJSONTime is t as hclog's JSON format writes it:
// 2006-01-02T15:04:05.000000Z07:00.
func appendJSONTime(b []byte, t time.Time) []byte {
	s := stampOf(t)
	b = append(b, s.json...)
	b = appendFraction(b, t.Nanosecond()/1e3, 6)
	return append(b, s.jsonZone...)
}

// appendCombinedTime is t as the combined format writes it:
// 02/Jan/2006:15:04:05 -0700.
func appendCombinedTime(b []byte, t time.Time) []byte { return append(b, stampOf(t).comb...) }

// appendFraction appends '.' and v in digits digits, zero-padded.
func appendFraction(b []byte, v, digits int) []byte {
	b = append(b, '.')
	n := len(b)
	for range digits {
		b = append(b, '0')
	}
	for i := len(b) - 1; i >= n; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}

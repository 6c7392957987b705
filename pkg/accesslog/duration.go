package accesslog

import (
	"strconv"
	"time"
)

// appendDuration appends d as time.Duration's String writes it ("5.518ms",
// "1m2.5s"), without allocating.
func appendDuration(b []byte, d time.Duration) []byte {
	if d < 0 {
		b = append(b, '-')
		d = -d // (time.Duration's minimum has no positive: never a request's)
	}
	switch {
	case d == 0:
		return append(b, "0s"...)
	case d < time.Microsecond:
		return append(strconv.AppendInt(b, int64(d), 10), "ns"...)
	case d < time.Millisecond:
		return appendFrac(b, int64(d), 3, "µs")
	case d < time.Second:
		return appendFrac(b, int64(d), 6, "ms")
	}
	h := d / time.Hour
	d -= h * time.Hour
	m := d / time.Minute
	d -= m * time.Minute
	if h > 0 {
		b = append(strconv.AppendInt(b, int64(h), 10), 'h')
	}
	if h > 0 || m > 0 {
		b = append(strconv.AppendInt(b, int64(m), 10), 'm')
	}
	return appendFrac(b, int64(d), 9, "s")
}

// appendFrac appends v / 10^digits with its fraction, trailing zeros
// dropped, then unit.
func appendFrac(b []byte, v int64, digits int, unit string) []byte {
	div := int64(1)
	for range digits {
		div *= 10
	}
	b = strconv.AppendInt(b, v/div, 10)
	if f := v % div; f != 0 {
		for f%10 == 0 {
			f /= 10
			div /= 10
			digits--
		}
		b = append(b, '.')
		// Leading zeros of the fraction.
		for p := div / 10; p > f; p /= 10 {
			b = append(b, '0')
		}
		b = strconv.AppendInt(b, f, 10)
	}
	return append(b, unit...)
}

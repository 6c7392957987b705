package httpstatus

import "testing"

func TestNoBody(t *testing.T) {
	for code, want := range map[int]bool{100: true, 101: true, 103: true, 199: true, 200: false, 201: false, 204: true, 206: false, 301: false, 304: true, 404: false, 500: false} {
		if NoBody(code) != want {
			t.Errorf("NoBody(%d) = %v, want %v", code, !want, want)
		}
	}
}

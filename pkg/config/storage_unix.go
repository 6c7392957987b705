//go:build unix

package config

import "golang.org/x/sys/unix"

// writable reports why lb's user cannot create files in the folder dir,
// nil if it can.
func writable(dir string) error { return unix.Access(dir, unix.W_OK|unix.X_OK) }

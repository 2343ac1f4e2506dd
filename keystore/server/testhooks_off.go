//go:build !testhooks

package server

// In a real build the clock is the real one and nothing can move it.
func defaultClock() Clock { return realClock{} }

func registerTestHooks(*Server, func(pattern, op string, f handlerFunc)) {}

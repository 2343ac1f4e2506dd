// Command hostcrypt is the command line for hostcryptd and keystored.
package main

import (
	"context"
	"os"
	"os/signal"

	"hostcrypt/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

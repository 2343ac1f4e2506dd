// Command hostcrypt is the command line of hostcrypt (see package cli).
package main

import (
	"os"

	"hostcrypt/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}))
}

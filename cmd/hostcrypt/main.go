// Command hostcrypt is the command line of hostcrypt (see package cli).
package main

import (
	"fmt"
	"os"

	"hostcrypt/cli"
	"hostcrypt/internal/version"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(version.String("hostcrypt"))
		return
	}
	os.Exit(cli.Main(os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}))
}

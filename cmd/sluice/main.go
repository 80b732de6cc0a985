// Command sluice runs a sluice router (sluice serve) and publishes app
// lifecycle events to the routers of a region (sluice deploy, restart,
// scale, domains, delete). Run "sluice help" for the commands and flags.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err, if any, as one line and returns the process status:
// 2 for a usage error, 1 for any other failure.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case isUsage(err):
		fmt.Fprintf(stderr, "sluice: %v (see sluice help)\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "sluice: %v\n", err)
		return 1
	}
}

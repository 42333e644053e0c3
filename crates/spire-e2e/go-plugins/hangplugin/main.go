// A program that never completes the plugin handshake (stays silent until killed).
package main

import "time"

func main() {
	for {
		time.Sleep(time.Hour)
	}
}

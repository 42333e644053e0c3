// An ordinary program that is not a plugin: prints a line and exits.
package main

import "fmt"

func main() { fmt.Println("hello, I am not a plugin") }

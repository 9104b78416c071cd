package main

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/concord-kv/concord/bench"
)

func main() {
	n, _ := strconv.ParseInt(os.Args[2], 10, 64)
	err := bench.Load(context.Background(), bench.ClientConfig{Endpoints: []string{os.Args[1]}}, "/bench/rss/", n, 256, nil)
	fmt.Println("load:", err)
}

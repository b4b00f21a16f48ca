// Command shardgen prints shard placement vectors with Go's standard FNV-1a and the Jump
// consistent hash exactly as Centrifugo computes them (consistentIndex in its Redis shard code),
// so that the C implementation is checked against an independent FNV implementation.
//
//	go run ./schemas/vectors/shardgen > schemas/vectors/shards.tsv
package main

import (
	"fmt"
	"hash/fnv"
)

func jumpHash(key uint64, numBuckets int) int32 {
	var b int64 = -1
	var j int64
	for j < int64(numBuckets) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int32(b)
}

func main() {
	fmt.Println("# user\tfnv1a64 (hex)\tshard of 1..8 shards (comma-separated)")
	users := []string{"", "a", "42", "foobar", "user-1", "user-2", "user-3", "alice", "bob",
		"😀", "a very long user id that keeps going and going", "0", "1000000"}
	for i := 0; i < 20; i++ {
		users = append(users, fmt.Sprintf("u%d", i*7919))
	}
	for _, u := range users {
		if u == "" {
			continue // Not a valid user id; FNV of "" is checked in the unit tests directly.
		}
		h := fnv.New64a()
		h.Write([]byte(u))
		sum := h.Sum64()
		fmt.Printf("%s\t%016x\t", u, sum)
		for n := 1; n <= 8; n++ {
			if n > 1 {
				fmt.Print(",")
			}
			fmt.Print(jumpHash(sum, n))
		}
		fmt.Println()
	}
}

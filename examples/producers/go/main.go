// Publishes one userstatus event to Kafka (segmentio/kafka-go + vmihailenco/msgpack).
//
//	usage: producer BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]
//	e.g.   go run . 127.0.0.1:9092 user_status active 42 dnd
//
// The value is the msgpack map of schemas/events.md: {"type", "user", "time" (Unix ms), "state"
// (optional), "v": 1}. The key is the user id and the balancer is kafka-go's Murmur2Balancer, which
// is compatible with the Java client's partitioner and librdkafka's murmur2_random, so every producer,
// in any language, puts one user's events on the same partition. Exits 0 only after the broker
// acknowledged the event (acks=all). Pure Go, no cgo: kafka-go has no idempotent producer, so a
// retried send may duplicate an event, which userstatus tolerates (updates are max-merges).
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/vmihailenco/msgpack/v5"
)

// event is the msgpack map of schemas/events.md; fields are encoded in this order.
type event struct {
	Type  string  `msgpack:"type"`
	User  string  `msgpack:"user"`
	Time  int64   `msgpack:"time"`
	State *string `msgpack:"state,omitempty"`
	V     int     `msgpack:"v"`
}

func main() {
	args := os.Args[1:]
	if len(args) < 4 || len(args) > 6 {
		fmt.Fprintln(os.Stderr, "usage: producer BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]")
		os.Exit(2)
	}
	ev := event{Type: args[2], User: args[3], Time: time.Now().UnixMilli(), V: 1}
	if len(args) > 4 && args[4] != "-" {
		ev.State = &args[4]
	}
	if len(args) > 5 {
		t, err := strconv.ParseInt(args[5], 10, 64)
		if err != nil || t < 0 {
			fmt.Fprintf(os.Stderr, "TIME_MS must be a non-negative integer, not %q\n", args[5])
			os.Exit(2)
		}
		ev.Time = t
	}
	value, err := msgpack.Marshal(&ev)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot encode the event:", err)
		os.Exit(1)
	}

	w := &kafka.Writer{
		Addr:         kafka.TCP(strings.Split(args[0], ",")...),
		Topic:        args[1],
		Balancer:     &kafka.Murmur2Balancer{}, // Java-compatible: same partition per user in every client
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 10 * time.Millisecond,
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(ev.User), Value: value}); err != nil {
		fmt.Fprintln(os.Stderr, "delivery failed:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "delivered to %s\n", args[1])
}

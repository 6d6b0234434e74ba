// A second load generator for `deploy/bench/compare.sh --client go`, written on another client
// library (github.com/rabbitmq/amqp091-go, the Go client RabbitMQ maintains) so that RaftMQ's ratios
// against RabbitMQ are not an artefact of one client. Modelled on PerfTest's defaults: manual
// acks, one ack per message unless -multi-ack is given, no prefetch limit unless -prefetch
// is given, publishers as fast as they can or with -confirm N publishes awaiting a confirm.
//
// Each message carries its send time (unix nanoseconds, 8 bytes big-endian) at the start of
// its body; the consumer takes the end-to-end latency from it. Prints one JSON object.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

type options struct {
	uri        string
	producers  int
	consumers  int
	queues     int
	size       int
	seconds    int
	confirm    int
	persistent bool
	queueType  string
	prefetch   int
	multiAck   int
	fanout     bool
	prefix     string
}

type counters struct {
	published, confirmed, nacked, consumed atomic.Int64
}

// Latencies are kept per consumer and merged at the end; at most this many per consumer.
const maxSamples = 4 << 20

func main() {
	var o options
	flag.StringVar(&o.uri, "uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	flag.IntVar(&o.producers, "producers", 1, "publishing connections")
	flag.IntVar(&o.consumers, "consumers", 1, "consuming connections (spread over the queues)")
	flag.IntVar(&o.queues, "queues", 1, "queues")
	flag.IntVar(&o.size, "size", 16, "message body size in bytes (at least 8)")
	flag.IntVar(&o.seconds, "seconds", 10, "how long to publish")
	flag.IntVar(&o.confirm, "confirm", 0, "publisher confirms: publishes awaiting a confirm (0: no confirms)")
	flag.BoolVar(&o.persistent, "persistent", false, "delivery mode 2 and durable queues")
	flag.StringVar(&o.queueType, "queue-type", "classic", "classic or quorum")
	flag.IntVar(&o.prefetch, "prefetch", 0, "basic.qos prefetch count (0: unlimited)")
	flag.IntVar(&o.multiAck, "multi-ack", 1, "ack every N deliveries with multiple=true")
	flag.BoolVar(&o.fanout, "fanout", false, "publish to a fanout exchange bound to every queue")
	flag.StringVar(&o.prefix, "prefix", fmt.Sprintf("gob-%d", time.Now().UnixNano()), "queue and exchange name prefix")
	flag.Parse()
	if o.size < 8 {
		o.size = 8
	}
	if o.queueType != "classic" && o.queueType != "quorum" {
		fmt.Fprintf(os.Stderr, "go-client: -queue-type is classic or quorum, not %q\n", o.queueType)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "go-client:", err)
		os.Exit(1)
	}
}

func (o options) queue(i int) string { return fmt.Sprintf("%s-%d", o.prefix, i%o.queues) }

func (o options) exchange() string {
	if o.fanout {
		return o.prefix + "-fanout"
	}
	return "amq.direct"
}

// open dials the broker and opens one channel on the connection.
func open(uri string) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.Dial(uri)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

func declare(o options) error {
	conn, ch, err := open(o.uri)
	if err != nil {
		return err
	}
	defer conn.Close()
	if o.fanout {
		if err := ch.ExchangeDeclare(o.exchange(), "fanout", false, false, false, false, nil); err != nil {
			return err
		}
	}
	args := amqp.Table{}
	durable := o.persistent
	if o.queueType == "quorum" {
		args["x-queue-type"] = "quorum"
		durable = true
	}
	for i := 0; i < o.queues; i++ {
		if _, err := ch.QueueDeclare(o.queue(i), durable, false, false, false, args); err != nil {
			return err
		}
		if err := ch.QueueBind(o.queue(i), o.queue(i), o.exchange(), false, nil); err != nil {
			return err
		}
	}
	return nil
}

// cleanup deletes what declare made, so that a later run does not share a broker with
// leftover messages.
func cleanup(o options) {
	conn, ch, err := open(o.uri)
	if err != nil {
		return
	}
	defer conn.Close()
	for i := 0; i < o.queues; i++ {
		ch.QueueDelete(o.queue(i), false, false, false)
	}
	if o.fanout {
		ch.ExchangeDelete(o.exchange(), false, false)
	}
}

// subscribe opens a consumer's connection and starts consuming from its queue.
func subscribe(o options, i int) (*amqp.Connection, <-chan amqp.Delivery, error) {
	conn, ch, err := open(o.uri)
	if err != nil {
		return nil, nil, err
	}
	if o.prefetch > 0 {
		err = ch.Qos(o.prefetch, 0, false)
	}
	var deliveries <-chan amqp.Delivery
	if err == nil {
		deliveries, err = ch.Consume(o.queue(i), "", false, false, false, false, nil)
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, deliveries, nil
}

func consume(o options, i int, c *counters, ready *sync.WaitGroup, stop <-chan struct{}) ([]int64, error) {
	conn, deliveries, err := subscribe(o, i)
	ready.Done()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	samples := make([]int64, 0, 1<<16)
	unacked := 0
	for {
		select {
		case <-stop:
			return samples, nil
		case d, ok := <-deliveries:
			if !ok {
				return samples, nil
			}
			if len(d.Body) >= 8 && len(samples) < maxSamples {
				sent := int64(binary.BigEndian.Uint64(d.Body))
				samples = append(samples, time.Now().UnixNano()-sent)
			}
			c.consumed.Add(1)
			unacked++
			if unacked >= o.multiAck {
				if err := d.Ack(o.multiAck > 1); err != nil {
					return samples, err
				}
				unacked = 0
			}
		}
	}
}

func publish(o options, i int, c *counters, stop <-chan struct{}) error {
	conn, ch, err := open(o.uri)
	if err != nil {
		return err
	}
	defer conn.Close()
	var window chan struct{}
	if o.confirm > 0 {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		window = make(chan struct{}, o.confirm)
		confirms := ch.NotifyPublish(make(chan amqp.Confirmation, o.confirm))
		go func() {
			for conf := range confirms {
				if conf.Ack {
					c.confirmed.Add(1)
				} else {
					c.nacked.Add(1)
				}
				<-window
			}
		}()
	}
	mode := amqp.Transient
	if o.persistent {
		mode = amqp.Persistent
	}
	body := make([]byte, o.size)
	for n := 0; ; n++ {
		if window != nil {
			select {
			case window <- struct{}{}:
			case <-stop:
				return nil
			}
		} else {
			select {
			case <-stop:
				return nil
			default:
			}
		}
		binary.BigEndian.PutUint64(body, uint64(time.Now().UnixNano()))
		msg := amqp.Publishing{DeliveryMode: mode, Body: body}
		if err := ch.Publish(o.exchange(), o.queue(i+n), false, false, msg); err != nil {
			return err
		}
		c.published.Add(1)
	}
}

func percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(float64(len(sorted)-1)*p)]) / 1e6
}

func run(o options) error {
	if err := declare(o); err != nil {
		return err
	}
	defer cleanup(o)
	var c counters
	stop := make(chan struct{})
	var ready, consumers, producers sync.WaitGroup
	var mu sync.Mutex
	var latencies []int64
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for i := 0; i < o.consumers; i++ {
		ready.Add(1)
		consumers.Add(1)
		go func(i int) {
			defer consumers.Done()
			samples, err := consume(o, i, &c, &ready, stop)
			if err != nil {
				fail(err)
			}
			mu.Lock()
			latencies = append(latencies, samples...)
			mu.Unlock()
		}(i)
	}
	ready.Wait()
	start := time.Now()
	for i := 0; i < o.producers; i++ {
		producers.Add(1)
		go func(i int) {
			defer producers.Done()
			if err := publish(o, i, &c, stop); err != nil {
				fail(err)
			}
		}(i)
	}
	var last int64
	for s := 1; s <= o.seconds; s++ {
		time.Sleep(time.Until(start.Add(time.Duration(s) * time.Second)))
		now := c.consumed.Load()
		fmt.Fprintf(os.Stderr, "%3ds published %d confirmed %d consumed %d/s\n", s, c.published.Load(), c.confirmed.Load(), now-last)
		last = now
	}
	elapsed := time.Since(start).Seconds()
	published, confirmed, consumed := c.published.Load(), c.confirmed.Load(), c.consumed.Load()
	close(stop)
	producers.Wait()
	consumers.Wait()
	if firstErr != nil {
		return firstErr
	}
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	report := map[string]any{
		"publish_rate": float64(published) / elapsed,
		"confirm_rate": float64(confirmed) / elapsed,
		"consume_rate": float64(consumed) / elapsed,
		"nacked":       c.nacked.Load(),
		"latency_ms": map[string]float64{
			"p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95),
			"p99": percentile(latencies, 0.99), "max": percentile(latencies, 1),
		},
	}
	return json.NewEncoder(os.Stdout).Encode(report)
}

// A third load generator for `deploy/bench/compare.sh --client java`, on RabbitMQ's Java client
// (Debian's librabbitmq-client-java), the library PerfTest is built on. Like PerfTest with its
// defaults, it acks every delivery by hand unless --multi-ack is given, sets no prefetch limit
// unless --prefetch is given, and publishes as fast as it can, or with --confirm N publishes
// awaiting a confirm. The Java client writes and flushes every publish and every ack on its
// own, so the broker sees one small write per message from each side.
//
// Each message carries its send time (System.nanoTime, 8 bytes big-endian) at the start of its
// body; publisher and consumer share the process, so the consumer takes the end-to-end latency
// from it. Prints one JSON object with the same fields as the Go client.
//
// Run: java -cp /usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar JavaClient.java --help

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.MessageProperties;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

public class JavaClient {
    static String uri = "amqp://guest:guest@127.0.0.1:5672/%2f";
    static int producers = 1, consumers = 1, queues = 1, size = 16, seconds = 10, confirm = 0;
    static int prefetch = 0, multiAck = 1;
    static boolean persistent = false, fanout = false;
    static String queueType = "classic";
    static String prefix = "job-" + System.nanoTime();

    static final AtomicLong published = new AtomicLong(), confirmed = new AtomicLong(),
            nacked = new AtomicLong(), consumed = new AtomicLong();
    static final AtomicReference<Throwable> failure = new AtomicReference<>();
    static volatile boolean stopping = false;

    // Latency samples, at most this many per consumer.
    static final int MAX_SAMPLES = 4 << 20;

    static final String HELP = String.join("\n",
            "usage: JavaClient [--uri URI] [--producers N] [--consumers N] [--queues N] [--size BYTES]",
            "                  [--seconds S] [--confirm N] [--persistent] [--queue-type classic|quorum]",
            "                  [--prefetch N] [--multi-ack N] [--fanout] [--prefix NAME]",
            "  --confirm N    publisher confirms with N publishes awaiting a confirm (0: none)",
            "  --prefetch N   basic.qos prefetch count (0: unlimited)",
            "  --multi-ack N  ack every N deliveries with multiple=true (1: each on its own)");

    public static void main(String[] args) throws Exception {
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--persistent": persistent = true; continue;
                case "--fanout": fanout = true; continue;
                case "-h": case "--help": System.out.println(HELP); return;
                default: break;
            }
            if (i + 1 >= args.length) usage("missing a value after " + a);
            String v = args[++i];
            switch (a) {
                case "--uri": uri = v; break;
                case "--producers": producers = number(a, v); break;
                case "--consumers": consumers = number(a, v); break;
                case "--queues": queues = number(a, v); break;
                case "--size": size = Math.max(8, number(a, v)); break;
                case "--seconds": seconds = number(a, v); break;
                case "--confirm": confirm = number(a, v); break;
                case "--prefetch": prefetch = number(a, v); break;
                case "--multi-ack": multiAck = Math.max(1, number(a, v)); break;
                case "--queue-type": queueType = v; break;
                case "--prefix": prefix = v; break;
                default: usage("unknown flag " + a);
            }
        }
        if (!queueType.equals("classic") && !queueType.equals("quorum")) {
            usage("--queue-type is classic or quorum, not " + queueType);
        }
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(uri);
        run(factory);
    }

    static int number(String flag, String v) {
        try {
            return Integer.parseInt(v);
        } catch (NumberFormatException e) {
            usage(flag + " takes a whole number, not " + v);
            return 0;
        }
    }

    static void usage(String why) {
        System.err.println("java-client: " + why);
        System.err.println(HELP);
        System.exit(2);
    }

    static String queue(int i) { return prefix + "-" + (i % queues); }

    static String exchange() { return fanout ? prefix + "-fanout" : "amq.direct"; }

    static void declare(ConnectionFactory factory) throws Exception {
        try (Connection conn = factory.newConnection()) {
            Channel ch = conn.createChannel();
            if (fanout) ch.exchangeDeclare(exchange(), "fanout", false, false, null);
            Map<String, Object> arguments = new HashMap<>();
            boolean durable = persistent;
            if (queueType.equals("quorum")) {
                arguments.put("x-queue-type", "quorum");
                durable = true;
            }
            for (int i = 0; i < queues; i++) {
                ch.queueDeclare(queue(i), durable, false, false, arguments);
                ch.queueBind(queue(i), exchange(), queue(i));
            }
        }
    }

    static void cleanup(ConnectionFactory factory) {
        try (Connection conn = factory.newConnection()) {
            Channel ch = conn.createChannel();
            for (int i = 0; i < queues; i++) ch.queueDelete(queue(i));
            if (fanout) ch.exchangeDelete(exchange());
        } catch (Exception e) {
            // best effort: a later run uses its own prefix
        }
    }

    /** One consuming connection; its samples are read once the run has stopped. */
    static final class Consumer {
        final long[] samples = new long[MAX_SAMPLES];
        volatile int count = 0;
        final Connection conn;

        Consumer(ConnectionFactory factory, int i) throws Exception {
            conn = factory.newConnection();
            Channel ch = conn.createChannel();
            if (prefetch > 0) ch.basicQos(prefetch);
            ch.basicConsume(queue(i), false, new DefaultConsumer(ch) {
                int unacked = 0;

                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body)
                        throws java.io.IOException {
                    if (body.length >= 8 && count < MAX_SAMPLES) {
                        samples[count++] = System.nanoTime() - ByteBuffer.wrap(body).getLong();
                    }
                    consumed.incrementAndGet();
                    if (++unacked >= multiAck) {
                        getChannel().basicAck(env.getDeliveryTag(), multiAck > 1);
                        unacked = 0;
                    }
                }
            });
        }
    }

    static void publish(ConnectionFactory factory, int i) {
        Connection conn = null;
        try {
            conn = factory.newConnection();
            Channel ch = conn.createChannel();
            Semaphore window = null;
            if (confirm > 0) {
                Semaphore w = new Semaphore(confirm);
                window = w;
                ch.confirmSelect();
                // Confirms may cover several publishes (multiple=true); count them by sequence.
                final long[] settled = {0};
                ch.addConfirmListener(
                        (tag, multiple) -> settle(w, settled, tag, multiple, confirmed),
                        (tag, multiple) -> settle(w, settled, tag, multiple, nacked));
            }
            AMQP.BasicProperties props = persistent ? MessageProperties.PERSISTENT_BASIC : MessageProperties.BASIC;
            byte[] body = new byte[size];
            ByteBuffer stamp = ByteBuffer.wrap(body);
            for (long n = 0; !stopping; n++) {
                if (window != null && !window.tryAcquire(100, TimeUnit.MILLISECONDS)) continue;
                stamp.putLong(0, System.nanoTime());
                ch.basicPublish(exchange(), queue((int) (i + n)), props, body);
                published.incrementAndGet();
            }
        } catch (Throwable e) {
            if (!stopping) failure.compareAndSet(null, e);
        } finally {
            if (conn != null) conn.abort(5000);
        }
    }

    static synchronized void settle(Semaphore window, long[] settled, long tag, boolean multiple, AtomicLong counter) {
        long n = multiple ? tag - settled[0] : 1;
        if (n <= 0) return;
        settled[0] = multiple ? tag : Math.max(settled[0], tag);
        counter.addAndGet(n);
        window.release((int) n);
    }

    static double percentile(long[] sorted, double p) {
        if (sorted.length == 0) return 0;
        return sorted[(int) ((sorted.length - 1) * p)] / 1e6;
    }

    static void run(ConnectionFactory factory) throws Exception {
        declare(factory);
        List<Consumer> subscribed = new ArrayList<>();
        List<Thread> publishers = new ArrayList<>();
        try {
            for (int i = 0; i < consumers; i++) subscribed.add(new Consumer(factory, i));
            long start = System.nanoTime();
            for (int i = 0; i < producers; i++) {
                final int p = i;
                Thread t = new Thread(() -> publish(factory, p), "publisher-" + p);
                t.start();
                publishers.add(t);
            }
            long last = 0;
            for (int s = 1; s <= seconds; s++) {
                long wait = start + s * 1_000_000_000L - System.nanoTime();
                if (wait > 0) TimeUnit.NANOSECONDS.sleep(wait);
                long now = consumed.get();
                System.err.printf("%3ds published %d confirmed %d consumed %d/s%n",
                        s, published.get(), confirmed.get(), now - last);
                last = now;
            }
            double elapsed = (System.nanoTime() - start) / 1e9;
            long pub = published.get(), conf = confirmed.get(), cons = consumed.get();
            stopping = true;
            for (Thread t : publishers) t.join();
            // abort: close without waiting on deliveries still in flight, and without throwing
            for (Consumer c : subscribed) c.conn.abort(5000);
            if (failure.get() != null) {
                System.err.println("java-client: " + failure.get());
                System.exit(1);
            }
            // A consumer's thread may still be taking deliveries: read each count once.
            int[] counts = new int[subscribed.size()];
            int total = 0;
            for (int k = 0; k < counts.length; k++) total += counts[k] = subscribed.get(k).count;
            long[] all = new long[total];
            int at = 0;
            for (int k = 0; k < counts.length; k++) {
                System.arraycopy(subscribed.get(k).samples, 0, all, at, counts[k]);
                at += counts[k];
            }
            Arrays.sort(all);
            System.out.printf(java.util.Locale.ROOT,
                    "{\"publish_rate\":%.1f,\"confirm_rate\":%.1f,\"consume_rate\":%.1f,\"nacked\":%d,"
                            + "\"latency_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f}}%n",
                    pub / elapsed, conf / elapsed, cons / elapsed, nacked.get(),
                    percentile(all, 0.50), percentile(all, 0.95), percentile(all, 0.99), percentile(all, 1));
        } finally {
            stopping = true;
            cleanup(factory);
        }
        System.exit(0);
    }
}

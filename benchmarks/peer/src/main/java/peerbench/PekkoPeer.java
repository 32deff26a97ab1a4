package peerbench;

import com.fasterxml.jackson.annotation.JsonCreator;
import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.pekko.actor.typed.ActorRef;
import org.apache.pekko.actor.typed.ActorSystem;
import org.apache.pekko.actor.typed.javadsl.Behaviors;
import org.apache.pekko.cluster.MemberStatus;
import org.apache.pekko.cluster.sharding.typed.javadsl.ClusterSharding;
import org.apache.pekko.cluster.sharding.typed.javadsl.Entity;
import org.apache.pekko.cluster.sharding.typed.javadsl.EntityRef;
import org.apache.pekko.cluster.sharding.typed.javadsl.EntityTypeKey;
import org.apache.pekko.cluster.typed.Cluster;
import org.apache.pekko.cluster.typed.Join;
import org.apache.pekko.persistence.typed.PersistenceId;
import org.apache.pekko.persistence.typed.javadsl.CommandHandler;
import org.apache.pekko.persistence.typed.javadsl.EventHandler;
import org.apache.pekko.persistence.typed.javadsl.EventSourcedBehavior;

/**
 * The Pekko side of raysource's peer benchmark: one aggregate type, a counter whose {@code Add}
 * persists one {@code Added(data)} event (Jackson JSON, ~111 bytes with a 100-character payload)
 * and replies the new count; no tags, no snapshots. Cluster Sharding (single-node cluster,
 * default 1000 shards) in front, pekko-persistence-cassandra behind, defaults otherwise.
 *
 * <p>Workloads (closed loops of futures in this JVM, {@code EntityRef.ask}), as in the driver
 * (benchmarks/peer/run.py): w1 one hot aggregate with C callers; w2 N aggregates, C callers at
 * random, each touched once before the clock (that first touch is timed too); w4 one sequential
 * caller; w3 the first command to an aggregate of R events after passivation (recovery + one
 * write). Prints one JSON object (also to --out).
 */
public final class PekkoPeer {

  /** Marker bound to jackson-json in application.conf. */
  public interface Json {}

  public interface Command extends Json {}

  public static final class Add implements Command {
    final String data;
    final ActorRef<Long> replyTo;

    Add(String data, ActorRef<Long> replyTo) {
      this.data = data;
      this.replyTo = replyTo;
    }
  }

  /** Persists {@code n} events in one persistAll (used to fill the w3 aggregate). */
  public static final class AddMany implements Command {
    final int n;
    final String data;
    final ActorRef<Long> replyTo;

    AddMany(int n, String data, ActorRef<Long> replyTo) {
      this.n = n;
      this.data = data;
      this.replyTo = replyTo;
    }
  }

  /** Asks the shard to passivate this entity (w3). */
  public static final class Passivate implements Command {
    final ActorRef<Boolean> replyTo;

    Passivate(ActorRef<Boolean> replyTo) {
      this.replyTo = replyTo;
    }
  }

  /** The stop message sharding delivers when passivating. */
  public static final class Stop implements Command {}

  public static final class Added implements Json {
    public final String data;

    @JsonCreator
    public Added(@JsonProperty("data") String data) {
      this.data = data;
    }
  }

  public static final class Counter {
    final long count;

    Counter(long count) {
      this.count = count;
    }
  }

  static final EntityTypeKey<Command> KEY = EntityTypeKey.create(Command.class, "peer");

  static final class CounterBehavior extends EventSourcedBehavior<Command, Added, Counter> {
    private final ActorRef<ClusterSharding.ShardCommand> shard;
    private final ActorRef<Command> self;

    CounterBehavior(PersistenceId id, ActorRef<ClusterSharding.ShardCommand> shard, ActorRef<Command> self) {
      super(id);
      this.shard = shard;
      this.self = self;
    }

    @Override
    public Counter emptyState() {
      return new Counter(0);
    }

    @Override
    public CommandHandler<Command, Added, Counter> commandHandler() {
      return newCommandHandlerBuilder()
          .forAnyState()
          .onCommand(Add.class, (state, c) ->
              Effect().persist(new Added(c.data)).thenReply(c.replyTo, s -> s.count))
          .onCommand(AddMany.class, (state, c) -> {
            List<Added> events = new ArrayList<>(c.n);
            for (int i = 0; i < c.n; i++) events.add(new Added(c.data));
            return Effect().persist(events).thenReply(c.replyTo, s -> s.count);
          })
          .onCommand(Passivate.class, (state, c) -> {
            shard.tell(new ClusterSharding.Passivate<>(self));
            return Effect().none().thenReply(c.replyTo, s -> true);
          })
          .onCommand(Stop.class, (state, c) -> Effect().stop())
          .build();
    }

    @Override
    public EventHandler<Counter, Added> eventHandler() {
      return newEventHandlerBuilder().forAnyState()
          .onEvent(Added.class, (state, e) -> new Counter(state.count + 1))
          .build();
    }
  }

  // ------------------------------------------------------------------ the load

  private final ActorSystem<Void> system;
  private final ClusterSharding sharding;
  private final String run = UUID.randomUUID().toString().substring(0, 8);
  private final String payload;
  private final Duration askTimeout = Duration.ofSeconds(30);

  PekkoPeer(ActorSystem<Void> system, int payloadChars) {
    this.system = system;
    this.sharding = ClusterSharding.get(system);
    this.payload = "x".repeat(payloadChars);
    sharding.init(Entity.of(KEY, ctx -> Behaviors.<Command>setup(actor -> new CounterBehavior(
            PersistenceId.of(KEY.name(), ctx.getEntityId()), ctx.getShard(), actor.getSelf())))
        .withStopMessage(new Stop()));
  }

  EntityRef<Command> entity(String id) {
    return sharding.entityRefFor(KEY, run + "-" + id);
  }

  CompletableFuture<Long> add(EntityRef<Command> ref) {
    return ref.<Long>ask(r -> new Add(payload, r), askTimeout).toCompletableFuture();
  }

  /** C closed-loop callers for warmup + seconds; latencies (ns) of the measured window only. */
  Map<String, Object> closedLoop(List<EntityRef<Command>> targets, int callers, double warmup,
                                 double seconds) throws Exception {
    long start = System.nanoTime();
    long clockFrom = start + (long) (warmup * 1e9);
    long clockTo = clockFrom + (long) (seconds * 1e9);
    List<Long> latencies = Collections.synchronizedList(new ArrayList<>());
    AtomicLong errors = new AtomicLong();
    AtomicLong answered = new AtomicLong();
    long cpu0 = cpuNanos();
    List<CompletableFuture<Void>> loops = new ArrayList<>();
    for (int c = 0; c < callers; c++) {
      CompletableFuture<Void> done = new CompletableFuture<>();
      loops.add(done);
      next(targets, clockFrom, clockTo, latencies, errors, answered, done);
    }
    CompletableFuture.allOf(loops.toArray(new CompletableFuture[0])).get();
    Map<String, Object> out = stats(latencies, seconds, errors.get());
    // CPU of this JVM (callers + sharding + persistence + driver) per answered command,
    // warm-up included; the Cassandra node's CPU is not in it
    out.put("cpu_ms_per_command", (cpuNanos() - cpu0) / 1e6 / Math.max(1, answered.get()));
    return out;
  }

  static long cpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean)
        java.lang.management.ManagementFactory.getOperatingSystemMXBean()).getProcessCpuTime();
  }

  private void next(List<EntityRef<Command>> targets, long clockFrom, long clockTo,
                    List<Long> latencies, AtomicLong errors, AtomicLong answered,
                    CompletableFuture<Void> done) {
    long t0 = System.nanoTime();
    if (t0 >= clockTo) {
      done.complete(null);
      return;
    }
    EntityRef<Command> ref = targets.get(ThreadLocalRandom.current().nextInt(targets.size()));
    add(ref).whenComplete((count, err) -> {
      long t1 = System.nanoTime();
      if (err != null) errors.incrementAndGet();
      else {
        answered.incrementAndGet();
        if (t0 >= clockFrom && t1 <= clockTo) latencies.add(t1 - t0);
      }
      next(targets, clockFrom, clockTo, latencies, errors, answered, done);
    });
  }

  static Map<String, Object> stats(List<Long> latenciesNs, double seconds, long errors) {
    List<Long> xs = new ArrayList<>(latenciesNs);
    Collections.sort(xs);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("commands", xs.size());
    out.put("seconds", seconds);
    out.put("commands_per_s", xs.size() / seconds);
    out.put("p50_ms", pct(xs, 50));
    out.put("p99_ms", pct(xs, 99));
    out.put("errors", errors);
    return out;
  }

  static double pct(List<Long> sorted, double p) {
    if (sorted.isEmpty()) return Double.NaN;
    int i = (int) Math.round(p / 100 * (sorted.size() - 1));
    return sorted.get(Math.min(sorted.size() - 1, i)) / 1e6;
  }

  Map<String, Object> w1(int callers, double warmup, double seconds) throws Exception {
    return closedLoop(List.of(entity("hot")), callers, warmup, seconds);
  }

  Map<String, Object> w2(int entities, int callers, double warmup, double seconds)
      throws Exception {
    List<EntityRef<Command>> targets = new ArrayList<>();
    for (int i = 0; i < entities; i++) targets.add(entity("many-" + i));
    long t0 = System.nanoTime();
    List<CompletableFuture<Long>> first = new ArrayList<>();
    for (EntityRef<Command> ref : targets) first.add(add(ref));
    int failed = 0;
    for (int i = 0; i < targets.size(); i++) {
      try {
        first.get(i).get();
      } catch (Exception e) {  // an ask timeout on a loaded machine: once more, like raysource's
        failed++;
        add(targets.get(i)).get();
      }
    }
    double firstTouch = (System.nanoTime() - t0) / 1e9;
    Map<String, Object> out = closedLoop(targets, callers, warmup, seconds);
    out.put("first_touch_s", firstTouch);
    out.put("first_touch_errors", failed);
    out.put("entities", entities);
    return out;
  }

  Map<String, Object> w4(int n) throws Exception {
    EntityRef<Command> ref = entity("seq");
    add(ref).get();  // activation outside the clock
    List<Long> xs = new ArrayList<>();
    long t = System.nanoTime();
    for (int i = 0; i < n; i++) {
      long t0 = System.nanoTime();
      add(ref).get();
      xs.add(System.nanoTime() - t0);
    }
    double seconds = (System.nanoTime() - t) / 1e9;
    return stats(xs, seconds, 0);
  }

  Map<String, Object> w3(int events, int recoveries) throws Exception {
    EntityRef<Command> ref = entity("recovery");
    for (int written = 0; written < events; written += 100) {
      int n = Math.min(100, events - written);
      ref.<Long>ask(r -> new AddMany(n, payload, r), askTimeout).toCompletableFuture().get();
    }
    List<Double> ms = new ArrayList<>();
    for (int i = 0; i < recoveries; i++) {
      ref.<Boolean>ask(Passivate::new, askTimeout).toCompletableFuture().get();
      Thread.sleep(1500);  // the shard stops the entity (handoff of the stop message)
      long t0 = System.nanoTime();
      add(ref).get();
      ms.add((System.nanoTime() - t0) / 1e6);
    }
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("events", events);
    out.put("first_command_ms", ms);
    List<Double> sorted = new ArrayList<>(ms);
    Collections.sort(sorted);
    out.put("median_ms", sorted.get(sorted.size() / 2));
    return out;
  }

  static long rssBytes() {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
        if (line.startsWith("VmRSS:")) {
          return Long.parseLong(line.replaceAll("[^0-9]", "")) * 1024;
        }
      }
    } catch (Exception ignored) {
      // not Linux: no figure
    }
    return -1;
  }

  // ------------------------------------------------------------------ main

  public static void main(String[] argv) {
    try {
      run(argv);
      System.exit(0);
    } catch (Throwable t) {
      t.printStackTrace();
      System.exit(1);  // the actor system's threads would keep the JVM alive
    }
  }

  static void run(String[] argv) throws Exception {
    Map<String, String> a = new LinkedHashMap<>(Map.of(
        "--seconds", "20", "--warmup", "5", "--callers", "50", "--entities", "1000",
        "--sequential", "2000", "--recovery-events", "10000", "--recoveries", "3",
        "--payload", "100", "--workloads", "w1,w2,w4,w3", "--out", ""));
    for (int i = 0; i + 1 < argv.length; i += 2) {
      if (!a.containsKey(argv[i])) throw new IllegalArgumentException("unknown option " + argv[i]);
      a.put(argv[i], argv[i + 1]);
    }
    double seconds = Double.parseDouble(a.get("--seconds"));
    double warmup = Double.parseDouble(a.get("--warmup"));
    int callers = Integer.parseInt(a.get("--callers"));
    List<String> workloads = List.of(a.get("--workloads").split(","));

    long started = System.nanoTime();
    ActorSystem<Void> system = ActorSystem.create(Behaviors.empty(), "peer");
    Cluster cluster = Cluster.get(system);
    cluster.manager().tell(Join.create(cluster.selfMember().address()));
    while (cluster.selfMember().status() != MemberStatus.up()) Thread.sleep(50);
    PekkoPeer peer = new PekkoPeer(system, Integer.parseInt(a.get("--payload")));
    // first use creates keyspace/tables and connects: outside every clock; on a loaded
    // machine the plugin's schema statements may time out at first, so try a few times
    for (int attempt = 1; ; attempt++) {
      try {
        peer.add(peer.entity("warm")).get(120, TimeUnit.SECONDS);
        break;
      } catch (Exception e) {
        if (attempt == 5) throw e;
        System.err.println("warm-up attempt " + attempt + " failed: " + e);
        Thread.sleep(2000);
      }
    }

    // the JIT compiles the command path before any clock (W1 came first and paid for it)
    peer.closedLoop(List.of(peer.entity("jit")), callers, 0, warmup);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("system", "pekko");
    out.put("startup_s", (System.nanoTime() - started) / 1e9);
    for (String w : workloads) {
      switch (w) {
        case "w1" -> out.put("w1", peer.w1(callers, warmup, seconds));
        case "w2" -> {
          out.put("w2", peer.w2(Integer.parseInt(a.get("--entities")), callers, warmup, seconds));
          out.put("rss_after_w2_bytes", rssBytes());
        }
        case "w4" -> out.put("w4", peer.w4(Integer.parseInt(a.get("--sequential"))));
        case "w3" -> out.put("w3", peer.w3(Integer.parseInt(a.get("--recovery-events")),
                                           Integer.parseInt(a.get("--recoveries"))));
        default -> throw new IllegalArgumentException("unknown workload " + w);
      }
    }
    out.put("rss_end_bytes", rssBytes());
    out.put("processes", 1);
    out.put("heap_used_bytes", Runtime.getRuntime().totalMemory() - Runtime.getRuntime().freeMemory());
    String json = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT)
        .writeValueAsString(out);
    System.out.println(json);
    if (!a.get("--out").isEmpty()) Files.writeString(Path.of(a.get("--out")), json);
    system.terminate();
    system.getWhenTerminated().toCompletableFuture().get(30, TimeUnit.SECONDS);
  }
}

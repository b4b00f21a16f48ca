#!/usr/bin/env bash
# scripts/kafka.sh {fetch|start|stop|status|logs} — a real single-node Apache Kafka broker (KRaft,
# broker+controller in one JVM, loopback only) from the official jars on Maven Central.
#   fetch   copy the jars listed in scripts/kafka/pom.xml into $CACHE/kafka-libs (once)
#   start   format storage (once), start the broker in the background, wait until it answers
#   stop    SIGTERM, wait up to 30 s, then SIGKILL
#   status  exit 0 when the broker of $KAFKA_PORT runs, 1 otherwise
#   logs    print the tail of the broker log
# Env: USERSTATUS_CACHE (default ~/.cache/userstatus), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
#      KAFKA_DATA ($CACHE/kafka-data-$KAFKA_PORT), KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (90 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

POM="$ROOT/scripts/kafka/pom.xml"
LIBS="$CACHE/kafka-libs"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_DATA="${KAFKA_DATA:-$CACHE/kafka-data-$KAFKA_PORT}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
PIDFILE="$KAFKA_DATA/kafka.pid"
LOGFILE="$KAFKA_DATA/kafka.log"
PROPS="$KAFKA_DATA/server.properties"
PATTERN="kafka.Kafka $PROPS"

pom_hash() { sha256sum "$POM" | cut -c1-16; }

cmd_fetch() {
    local stamp
    stamp="$LIBS/.pom-$(pom_hash)"
    if [[ -f "$stamp" ]]; then
        info "Kafka jars already in $LIBS"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found: run scripts/deps.sh first"
    command -v java >/dev/null || die "java not found: run scripts/deps.sh first"
    local version
    version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
    info "fetching Apache Kafka $version jars from Maven Central into $LIBS"
    local t0=$SECONDS tmp="$LIBS.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$CACHE"
    local mlog="$CACHE/kafka-fetch.log"
    if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >"$mlog" 2>&1; then
        cat "$mlog" >&2
        rm -rf "$tmp"
        die "mvn could not fetch the Kafka jars (output above, also in $mlog)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13 jar missing after fetch"; }
    touch "$tmp/.pom-$(pom_hash)"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    info "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s"
}

write_config() {
    mkdir -p "$KAFKA_DATA/logs"
    cat >"$PROPS" <<PROPS
# Written by scripts/kafka.sh — single-node KRaft broker for local development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA/logs
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
PROPS
    cat >"$KAFKA_DATA/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
L4J
}

random_cluster_id() {
    if command -v python3 >/dev/null; then
        python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))'
    else
        java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid
    fi
}

format_storage() {
    if [[ -f "$KAFKA_DATA/logs/meta.properties" ]]; then
        return 0
    fi
    local cid
    cid="$(random_cluster_id)"
    info "formatting KRaft storage in $KAFKA_DATA/logs (cluster id $cid)"
    java -cp "$LIBS/*" -Dlog4j.configuration="file:$KAFKA_DATA/log4j.properties" \
        kafka.tools.StorageTool format -t "$cid" -c "$PROPS" >"$KAFKA_DATA/format.log" 2>&1 \
        || { cat "$KAFKA_DATA/format.log" >&2; die "kafka storage format failed"; }
}

# broker_answers: true when the broker serves metadata requests (not just an open port).
broker_answers() {
    grep -q "Kafka Server started" "$LOGFILE" 2>/dev/null || return 1
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
        "$VENV/bin/python" - "127.0.0.1:$KAFKA_PORT" <<'PY' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
PY
    else
        port_open "$KAFKA_PORT"
    fi
}

cmd_start() {
    cmd_fetch
    command -v java >/dev/null || die "java not found: run scripts/deps.sh first"
    mkdir -p "$KAFKA_DATA"
    exec 9>"$KAFKA_DATA/.start.lock"
    flock 9  # two concurrent starts: the second waits, then finds the broker running
    if pid_alive "$PIDFILE" "$PATTERN"; then
        info "Kafka already running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PIDFILE"))"
    else
        if port_open "$KAFKA_PORT"; then
            die "port $KAFKA_PORT is taken by another process (not the broker of $KAFKA_DATA); set KAFKA_PORT"
        fi
        if port_open "$KAFKA_CONTROLLER_PORT"; then
            die "controller port $KAFKA_CONTROLLER_PORT is taken by another process; set KAFKA_CONTROLLER_PORT"
        fi
        write_config
        format_storage
        info "starting Kafka on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT, data $KAFKA_DATA)"
        [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.1"
        # setsid + nohup: the broker outlives the calling shell and ignores its terminal's signals.
        setsid nohup java -Xms128m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
            -Dlog4j.configuration="file:$KAFKA_DATA/log4j.properties" \
            -Dkafka.logs.dir="$KAFKA_DATA" \
            -cp "$LIBS/*" kafka.Kafka "$PROPS" >"$LOGFILE" 2>&1 </dev/null 9>&- &
        echo $! >"$PIDFILE"
    fi
    local t0=$SECONDS
    until broker_answers; do
        if ! pid_alive "$PIDFILE" "$PATTERN"; then
            echo "----- last lines of $LOGFILE -----" >&2
            tail -n 60 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "Kafka exited during start-up"
        fi
        if ((SECONDS - t0 >= KAFKA_START_TIMEOUT)); then
            echo "----- last lines of $LOGFILE -----" >&2
            tail -n 60 "$LOGFILE" >&2 || true
            die "Kafka did not answer within ${KAFKA_START_TIMEOUT}s (still running as pid $(cat "$PIDFILE"); 'scripts/kafka.sh stop' to end it)"
        fi
        sleep 0.5
    done
    info "Kafka ready on 127.0.0.1:$KAFKA_PORT after $((SECONDS - t0)) s (log: $LOGFILE)"
}

cmd_stop() {
    stop_pidfile "$PIDFILE" "Kafka on port $KAFKA_PORT" 30 "$PATTERN"
}

cmd_status() {
    if pid_alive "$PIDFILE" "$PATTERN"; then
        info "Kafka running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PIDFILE"), data $KAFKA_DATA)"
        return 0
    fi
    info "Kafka not running on port $KAFKA_PORT"
    return 1
}

case "${1:-}" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) tail -n "${2:-100}" "$LOGFILE" ;;
    *) echo "usage: $0 {fetch|start|stop|status|logs}" >&2; exit 2 ;;
esac

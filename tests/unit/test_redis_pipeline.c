/* The pipelined executor (redis_pipeline.c) against scripted fake Redis servers: protocol faults
 * that a real Redis rarely produces on demand -- a fatal error mid-pipeline, ASK inside
 * MULTI/EXEC, MOVED mid-group and with an empty host, a connection that dies while other nodes
 * still hold replies, a slot map of more than 4096 ranges. The real-Redis behaviour is covered by
 * the end-to-end tests. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "fake_redis.h"
#include "int_text.h"
#include "redis_pipeline.h"
#include "redis_topology.h"

/* ---------------------------------------------------------------------------------------------
 * A test operation: item i writes key "<tag>k<i>" with SET, alone or inside MULTI/EXEC.
 * ------------------------------------------------------------------------------------------ */

#define ITEMS 6

typedef struct test_op {
    const char *tag;  /* Hash tag of every key ("" for none). */
    int multi;        /* Wrap each item in MULTI/EXEC. */
    int extra;        /* Send a second command (PEXPIRE) after the SET. */
    int shards;       /* Item i goes to client-side shard i % shards (0: one shard). */
    int consumed[ITEMS];
    long long value[ITEMS]; /* Integer reply of the item's last command (or EXEC's first). */
    int refused[ITEMS];
    char key[64];
} test_op;

static void op_route(void *arg, size_t i, size_t *shard, const char **key, size_t *klen)
{
    test_op *t = arg;
    *shard = t->shards ? i % (size_t)t->shards : 0;
    *klen = (size_t)snprintf(t->key, sizeof(t->key), "%sk%zu", t->tag, i);
    *key = t->key;
}

static void op_append(void *arg, size_t i, us_pipe_sink *s)
{
    test_op *t = arg;
    char key[64], val[16];
    int klen = snprintf(key, sizeof(key), "%sk%zu", t->tag, i);
    int vlen = snprintf(val, sizeof(val), "%zu", i);
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    size_t mlen[1] = {5}, xlen[1] = {4};
    if (t->multi) us_pipe_cmd(s, 1, multi, mlen);
    const char *set[3] = {"SET", key, val};
    size_t slen[3] = {3, (size_t)klen, (size_t)vlen};
    us_pipe_cmd(s, 3, set, slen);
    if (t->extra) {
        const char *exp[3] = {"PEXPIRE", key, "1000"};
        size_t elen[3] = {7, (size_t)klen, 4};
        us_pipe_cmd(s, 3, exp, elen);
    }
    if (t->multi) us_pipe_cmd(s, 1, exec, xlen);
}

static void op_consume(void *arg, size_t i, redisReply **replies, size_t n)
{
    test_op *t = arg;
    t->consumed[i]++;
    const redisReply *r = replies[n - 1];
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) r = r->element[0];
    t->value[i] = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
}

static void op_refused(void *arg, size_t i, const char *error)
{
    ((test_op *)arg)->refused[i]++;
}

static int run(us_pipeline *p, test_op *t, char *err, size_t errlen)
{
    us_pipe_op op = {ITEMS, t, op_route, op_append, op_consume, op_refused};
    return us_pipeline_run(p, &op, err, errlen);
}

/* A store's topology over the given config key (redis_address or redis_cluster_address). */
static void topology_for(us_topology *topo, us_config *cfg, const char *key, const char *addrs)
{
    char err[256];
    us_config_override over[] = {{key, addrs}};
    assert_int_equal(us_config_load(cfg, NULL, NULL, over, 1, err, sizeof(err)), 0);
    if (us_topology_init(topo, cfg, err, sizeof(err)) != 0) fail_msg("%s", err);
}

/* The item index of a "SET <tag>k<i> <i>" command, or -1. */
static int item_of(const redisReply *cmd)
{
    return is_cmd(cmd, 0, "SET") && cmd->elements == 3 ? atoi(cmd->element[2]->str) : -1;
}

/* Answers SET with :<i>, so that a reply paired with the wrong item shows. */
static int echo_index(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    if (!c->in_multi && item_of(cmd) >= 0) return snprintf(out, cap, ":%d\r\n", item_of(cmd));
    return default_reply(c, cmd, out, cap);
}

/* ---------------------------------------------------------------------------------------------
 * Tests.
 * ------------------------------------------------------------------------------------------ */

static int oom_on_item_2(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    if (item_of(cmd) == 2)
        return snprintf(out, cap, "-OOM command not allowed when used memory > 'maxmemory'\r\n");
    return echo_index(f, c, cmd, out, cap);
}

static void test_fatal_error_mid_pipeline_fails_the_op_and_keeps_connections_in_step(void **state)
{
    fake *a = fake_start(oom_on_item_2);
    char addrs[64], err[256] = "";
    snprintf(addrs, sizeof(addrs), "127.0.0.1:%d", a->port);
    us_config cfg;
    us_topology topo;
    topology_for(&topo, &cfg, "user_status.redis_address", addrs);
    us_pipeline p = {.topo = &topo};

    test_op t = {.tag = ""};
    assert_int_equal(run(&p, &t, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "OOM"));
    assert_int_equal(t.refused[2], 0); /* A server-wide error is not the item's fault. */
    /* Every reply was read: the next operation pairs replies with its own items. */
    a->handle = echo_index;
    test_op t2 = {.tag = ""};
    assert_int_equal(run(&p, &t2, err, sizeof(err)), 0);
    for (int i = 0; i < ITEMS; i++) assert_int_equal(t2.value[i], i);

    us_pipeline_release(&p);
    us_topology_release(&topo);
    us_config_free(&cfg);
    fake_stop(a);
}

static int wrongtype_in_exec_of_item_1(fake *f, fake_conn *c, const redisReply *cmd, char *out,
                                       size_t cap)
{
    if (item_of(cmd) == 1) f->state = 1;
    if (is_cmd(cmd, 0, "EXEC") && f->state == 1) {
        f->state = 0;
        c->in_multi = 0;
        return snprintf(out, cap, "*1\r\n-WRONGTYPE Operation against a key holding the wrong "
                                  "kind of value\r\n");
    }
    return default_reply(c, cmd, out, cap);
}

static void test_key_error_inside_exec_refuses_only_its_item(void **state)
{
    fake *a = fake_start(wrongtype_in_exec_of_item_1);
    char addrs[64], err[256] = "";
    snprintf(addrs, sizeof(addrs), "127.0.0.1:%d", a->port);
    us_config cfg;
    us_topology topo;
    topology_for(&topo, &cfg, "user_status.redis_address", addrs);
    us_pipeline p = {.topo = &topo};

    test_op t = {.tag = "", .multi = 1};
    assert_int_equal(run(&p, &t, err, sizeof(err)), 0);
    for (int i = 0; i < ITEMS; i++) {
        assert_int_equal(t.refused[i], i == 1);
        assert_int_equal(t.consumed[i], i != 1);
    }
    us_pipeline_release(&p);
    us_topology_release(&topo);
    us_config_free(&cfg);
    fake_stop(a);
}

/* Cluster node A: owns every slot (or all but the moved one, once it said MOVED). */
static int slot_map(fake *f, char *out, size_t cap, int moved_slot)
{
    if (moved_slot < 0)
        return snprintf(out, cap, "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n",
                        f->port);
    int n = snprintf(out, cap, "*%d\r\n", 1 + (moved_slot > 0) + (moved_slot < 16383));
    if (moved_slot > 0)
        n += snprintf(out + n, cap - (size_t)n,
                      "*3\r\n:0\r\n:%d\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n", moved_slot - 1,
                      f->port);
    n += snprintf(out + n, cap - (size_t)n, "*3\r\n:%d\r\n:%d\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n",
                  moved_slot, moved_slot, f->peer_port);
    if (moved_slot < 16383)
        n += snprintf(out + n, cap - (size_t)n,
                      "*3\r\n:%d\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n", moved_slot + 1,
                      f->port);
    return n;
}

static int cluster_common(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap,
                          int *handled)
{
    *handled = 1;
    if (is_cmd(cmd, 0, "CLUSTER") && is_cmd(cmd, 1, "SHARDS"))
        return snprintf(out, cap, "-ERR unknown subcommand 'SHARDS'\r\n"); /* Redis 6 */
    if (is_cmd(cmd, 0, "CLUSTER") && is_cmd(cmd, 1, "SLOTS"))
        return slot_map(f, out, cap, f->state > 0 ? us_cluster_slot("{t}", 3) : -1);
    *handled = 0;
    return 0;
}

/* Node A of the ASK test: item 3's queued SET is being migrated to B. */
static int ask_item_3(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    int handled, n = cluster_common(f, c, cmd, out, cap, &handled);
    if (handled) return n;
    if (c->in_multi && item_of(cmd) == 3) {
        c->queued = -1; /* EXEC aborts. */
        return snprintf(out, cap, "-ASK %u 127.0.0.1:%d\r\n", us_cluster_slot("{t}", 3),
                        f->peer_port);
    }
    if (is_cmd(cmd, 0, "EXEC") && c->queued < 0) {
        c->in_multi = 0;
        return snprintf(out, cap,
                        "-EXECABORT Transaction discarded because of previous errors.\r\n");
    }
    return default_reply(c, cmd, out, cap);
}

static void test_ask_inside_multi_sends_asking_once_before_multi(void **state)
{
    fake *a = fake_start(ask_item_3), *b = fake_start(plain_reply);
    a->peer_port = b->port;
    char addrs[64], err[256] = "";
    snprintf(addrs, sizeof(addrs), "127.0.0.1:%d", a->port);
    us_config cfg;
    us_topology topo;
    topology_for(&topo, &cfg, "user_status.redis_cluster_address", addrs);
    us_pipeline p = {.topo = &topo};

    test_op t = {.tag = "{t}", .multi = 1};
    if (run(&p, &t, err, sizeof(err)) != 0) fail_msg("%s", err);
    for (int i = 0; i < ITEMS; i++) assert_int_equal(t.consumed[i], 1);
    char want[64];
    snprintf(want, sizeof(want), "ASKING\nMULTI\nSET {t}k3 3\nEXEC\n");
    assert_string_equal(b->log, want); /* ASKING once, before MULTI; nothing else went to B. */
    /* ASK leaves the slot map alone. */
    assert_int_equal(topo.slot_node[us_cluster_slot("{t}", 3)], 0);

    us_pipeline_release(&p);
    us_topology_release(&topo);
    us_config_free(&cfg);
    fake_stop(a);
    fake_stop(b);
}

/* Node A of the MOVED tests: item 4's second command (PEXPIRE) is answered MOVED, after which the
 * slot map says B. f->state: 0 before, 1 after. peer host written as "" when the test asks. */
static int empty_host;
static int moved_item_4(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    int handled, n = cluster_common(f, c, cmd, out, cap, &handled);
    if (handled) return n;
    if (is_cmd(cmd, 0, "PEXPIRE") && strcmp(cmd->element[1]->str, "{t}k4") == 0) {
        f->state = 1;
        return snprintf(out, cap, "-MOVED %u %s:%d\r\n", us_cluster_slot("{t}", 3),
                        empty_host ? "" : "127.0.0.1", f->peer_port);
    }
    return echo_index(f, c, cmd, out, cap);
}

static void moved_mid_group(int empty)
{
    empty_host = empty;
    fake *a = fake_start(moved_item_4), *b = fake_start(echo_index);
    a->peer_port = b->port;
    char addrs[64], err[256] = "";
    snprintf(addrs, sizeof(addrs), "127.0.0.1:%d", a->port);
    us_config cfg;
    us_topology topo;
    topology_for(&topo, &cfg, "user_status.redis_cluster_address", addrs);
    us_pipeline p = {.topo = &topo};

    /* Items 0..5 all in slot {t}: item 4's group is moved after its SET was applied on A, the
     * whole group goes again, to B; so do the items after the move (the map now says B). */
    test_op t = {.tag = "{t}", .extra = 1};
    if (run(&p, &t, err, sizeof(err)) != 0) fail_msg("%s", err);
    for (int i = 0; i < ITEMS; i++) assert_int_equal(t.consumed[i], 1);
    assert_non_null(strstr(b->log, "SET {t}k4 4\nPEXPIRE {t}k4 1000\n"));
    uint16_t owner = topo.slot_node[us_cluster_slot("{t}", 3)];
    assert_int_not_equal(owner, US_NO_NODE);
    assert_string_equal(topo.nodes[owner].addr.host, "127.0.0.1");
    assert_int_equal(topo.nodes[owner].addr.port, b->port);

    us_pipeline_release(&p);
    us_topology_release(&topo);
    us_config_free(&cfg);
    fake_stop(a);
    fake_stop(b);
}

static void test_moved_mid_group_sends_the_group_again_to_the_new_owner(void **state)
{
    moved_mid_group(0);
}

static void test_moved_with_an_empty_host_means_the_host_that_answered(void **state)
{
    moved_mid_group(1);
}

/* Node A dies on the first command it gets, while B holds replies for its items. */
static int die_once(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    if (f->state++ == 0) return -1;
    return echo_index(f, c, cmd, out, cap);
}

static void test_read_failure_with_replies_pending_on_other_nodes(void **state)
{
    fake *a = fake_start(die_once), *b = fake_start(echo_index);
    char addrs[128], err[256] = "";
    snprintf(addrs, sizeof(addrs), "127.0.0.1:%d,127.0.0.1:%d", a->port, b->port);
    us_config cfg;
    us_topology topo;
    topology_for(&topo, &cfg, "user_status.redis_address", addrs);
    us_pipeline p = {.topo = &topo};

    test_op t = {.tag = "", .shards = 2}; /* Even items on A (shard 0), odd ones on B. */
    assert_int_equal(run(&p, &t, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "read failed"));
    /* B's unread replies must not answer the next operation's commands. */
    test_op t2 = {.tag = "", .shards = 2};
    if (run(&p, &t2, err, sizeof(err)) != 0) fail_msg("%s", err);
    for (int i = 0; i < ITEMS; i++) assert_int_equal(t2.value[i], i);

    us_pipeline_release(&p);
    us_topology_release(&topo);
    us_config_free(&cfg);
    fake_stop(a);
    fake_stop(b);
}

/* A slot map of 5462 ranges of 3 slots, alternating between A and B. */
static int many_ranges(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    if (!(is_cmd(cmd, 0, "CLUSTER") && is_cmd(cmd, 1, "SLOTS")))
        return is_cmd(cmd, 0, "CLUSTER") ? snprintf(out, cap, "-ERR unknown subcommand\r\n")
                                         : default_reply(c, cmd, out, cap);
    int ranges = (16384 + 2) / 3;
    int n = snprintf(out, cap, "*%d\r\n", ranges);
    for (int k = 0; k < ranges; k++) {
        int first = k * 3, last = first + 2 > 16383 ? 16383 : first + 2;
        n += snprintf(out + n, cap - (size_t)n,
                      "*3\r\n:%d\r\n:%d\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n", first, last,
                      k % 2 ? f->peer_port : f->port);
    }
    return n;
}

static void test_slot_map_of_more_than_4096_ranges(void **state)
{
    fake *a = fake_start(many_ranges);
    a->peer_port = a->port + 1 > 65535 ? 1 : a->port + 1; /* Never connected to. */
    char addrs[64], err[256] = "";
    snprintf(addrs, sizeof(addrs), "127.0.0.1:%d", a->port);
    us_config cfg;
    us_topology topo;
    topology_for(&topo, &cfg, "user_status.redis_cluster_address", addrs);
    if (us_topology_refresh(&topo, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(topo.nnodes, 2);
    assert_int_equal(topo.nodes[topo.slot_node[0]].addr.port, a->port);
    assert_int_equal(topo.nodes[topo.slot_node[3]].addr.port, a->peer_port);
    assert_int_equal(topo.nodes[topo.slot_node[16383]].addr.port, a->peer_port); /* Range 5461. */
    for (int s = 0; s < US_CLUSTER_SLOTS; s++) assert_int_not_equal(topo.slot_node[s], US_NO_NODE);
    us_topology_release(&topo);
    us_config_free(&cfg);
    fake_stop(a);
}

/* The integer text of every command, index entry and JSON reply: the same digits as printf. */
static void test_int_text_matches_printf(void **state)
{
    (void)state;
    int64_t values[64] = {0, 1, -1, 9, 10, -10, 99, 100, INT64_MAX, INT64_MIN, INT64_MIN + 1,
                          1764806400000, -1764806400};
    uint64_t x = 88172645463325252ull; /* xorshift64: a spread of magnitudes and signs. */
    for (int i = 13; i < 64; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        values[i] = (int64_t)(x >> (i % 60));
        if (i % 2) values[i] = -values[i];
    }
    for (int i = 0; i < 64; i++) {
        char want[32], got[US_INT_TEXT_MAX];
        snprintf(want, sizeof(want), "%lld", (long long)values[i]);
        assert_int_equal(us_i64_cstr(got, values[i]), strlen(want));
        assert_string_equal(got, want);
    }
    char u[US_INT_TEXT_MAX];
    u[us_u64_text(u, UINT64_MAX)] = '\0';
    assert_string_equal(u, "18446744073709551615");
}

int main(void)
{
    /* As the programs do: a node closing mid-write is an error, not the end of the process. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int_text_matches_printf),
        cmocka_unit_test(test_fatal_error_mid_pipeline_fails_the_op_and_keeps_connections_in_step),
        cmocka_unit_test(test_key_error_inside_exec_refuses_only_its_item),
        cmocka_unit_test(test_ask_inside_multi_sends_asking_once_before_multi),
        cmocka_unit_test(test_moved_mid_group_sends_the_group_again_to_the_new_owner),
        cmocka_unit_test(test_moved_with_an_empty_host_means_the_host_that_answered),
        cmocka_unit_test(test_read_failure_with_replies_pending_on_other_nodes),
        cmocka_unit_test(test_slot_map_of_more_than_4096_ranges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

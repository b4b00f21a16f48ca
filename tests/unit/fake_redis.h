/* A scripted fake Redis for unit tests: one thread, one listening socket, a handler per command,
 * and a log of every command received. For protocol faults a real Redis rarely produces on demand.
 * Include after cmocka.h. */
#ifndef US_FAKE_REDIS_H
#define US_FAKE_REDIS_H

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>


#define FAKE_CONNS 8
#define FAKE_OUT (1 << 20) /* Bytes of one reply (a big slot map fits). */
#define FAKE_LOG 65536

typedef struct fake fake;
typedef struct fake_conn {
    int fd;
    redisReader *reader;
    int in_multi, queued;
} fake_conn;

/* Writes the reply to cmd into out and returns its length; -1 closes the connection. */
typedef int (*fake_handler)(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap);

struct fake {
    int lfd, port;
    pthread_t thread;
    fake_handler handle;
    int state; /* Free for the test's handler. */
    int peer_port;
    volatile int stop;
    pthread_mutex_t mu;
    char log[FAKE_LOG]; /* Every command received: its words joined by ' ', one per line. */
    size_t loglen;
    char *out;
    fake_conn conns[FAKE_CONNS];
};

static int is_cmd(const redisReply *cmd, size_t i, const char *word)
{
    return cmd->elements > i && strcasecmp(cmd->element[i]->str, word) == 0;
}

/* What a plain Redis would answer: +OK, +QUEUED inside MULTI, EXEC with :1 per command, else :1. */
static int default_reply(fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    if (is_cmd(cmd, 0, "MULTI")) {
        c->in_multi = 1;
        c->queued = 0;
        return snprintf(out, cap, "+OK\r\n");
    }
    if (is_cmd(cmd, 0, "EXEC")) {
        int n = snprintf(out, cap, "*%d\r\n", c->queued);
        for (int i = 0; i < c->queued; i++) n += snprintf(out + n, cap - (size_t)n, ":1\r\n");
        c->in_multi = 0;
        return n;
    }
    if (c->in_multi) {
        c->queued++;
        return snprintf(out, cap, "+QUEUED\r\n");
    }
    if (is_cmd(cmd, 0, "ASKING")) return snprintf(out, cap, "+OK\r\n");
    if (is_cmd(cmd, 0, "PING")) return snprintf(out, cap, "+PONG\r\n");
    return snprintf(out, cap, ":1\r\n");
}

/* A handler answering everything as default_reply does. */
static int plain_reply(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    return default_reply(c, cmd, out, cap);
}

static void fake_log(fake *f, const redisReply *cmd)
{
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < cmd->elements && f->loglen + cmd->element[i]->len + 2 < FAKE_LOG; i++) {
        memcpy(f->log + f->loglen, cmd->element[i]->str, cmd->element[i]->len);
        f->loglen += cmd->element[i]->len;
        f->log[f->loglen++] = i + 1 < cmd->elements ? ' ' : '\n';
    }
    f->log[f->loglen] = '\0';
    pthread_mutex_unlock(&f->mu);
}

static void conn_close(fake_conn *c)
{
    close(c->fd);
    redisReaderFree(c->reader);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static void *fake_run(void *arg)
{
    fake *f = arg;
    while (!f->stop) {
        struct pollfd pfd[FAKE_CONNS + 1];
        pfd[0] = (struct pollfd){f->lfd, POLLIN, 0};
        for (int i = 0; i < FAKE_CONNS; i++)
            pfd[i + 1] = (struct pollfd){f->conns[i].fd, POLLIN, 0};
        if (poll(pfd, FAKE_CONNS + 1, 20) <= 0) continue;
        if (pfd[0].revents & POLLIN) {
            int fd = accept(f->lfd, NULL, NULL);
            for (int i = 0; i < FAKE_CONNS && fd >= 0; i++)
                if (f->conns[i].fd < 0) {
                    f->conns[i].fd = fd;
                    f->conns[i].reader = redisReaderCreate();
                    fd = -1;
                }
            if (fd >= 0) close(fd);
        }
        for (int i = 0; i < FAKE_CONNS; i++) {
            fake_conn *c = &f->conns[i];
            if (c->fd < 0 || !(pfd[i + 1].revents & (POLLIN | POLLHUP))) continue;
            char buf[65536];
            ssize_t n = read(c->fd, buf, sizeof(buf));
            if (n <= 0) {
                conn_close(c);
                continue;
            }
            redisReaderFeed(c->reader, buf, (size_t)n);
            void *reply;
            while (c->fd >= 0 && redisReaderGetReply(c->reader, &reply) == REDIS_OK && reply) {
                redisReply *cmd = reply;
                fake_log(f, cmd);
                int len = f->handle(f, c, cmd, f->out, FAKE_OUT);
                freeReplyObject(cmd);
                if (len < 0) {
                    conn_close(c);
                    break;
                }
                for (int off = 0; off < len;) {
                    ssize_t w = write(c->fd, f->out + off, (size_t)(len - off));
                    if (w <= 0) break;
                    off += (int)w;
                }
            }
        }
    }
    return NULL;
}

static fake *fake_start(fake_handler handle)
{
    fake *f = calloc(1, sizeof(*f));
    f->out = malloc(FAKE_OUT);
    f->handle = handle;
    pthread_mutex_init(&f->mu, NULL);
    for (int i = 0; i < FAKE_CONNS; i++) f->conns[i].fd = -1;
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    getsockname(f->lfd, (struct sockaddr *)&sa, &len);
    f->port = ntohs(sa.sin_port);
    listen(f->lfd, 16);
    pthread_create(&f->thread, NULL, fake_run, f);
    return f;
}

static void fake_stop(fake *f)
{
    f->stop = 1;
    pthread_join(f->thread, NULL);
    for (int i = 0; i < FAKE_CONNS; i++)
        if (f->conns[i].fd >= 0) conn_close(&f->conns[i]);
    close(f->lfd);
    free(f->out);
    free(f);
}

#endif

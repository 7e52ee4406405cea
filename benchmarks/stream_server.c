/*
 * stream_server.c: a Triton generate_stream look-alike whose timing is fixed and known, for measuring the
 * load generator itself (benchmarks/generator_capacity.py builds and drives it).
 *
 * Why C: at 2,000 requests/s of 64-token streams the server writes 128,000 SSE events a second and must
 * still leave its core mostly idle; an asyncio server needs more than a core for that, and the benchmark
 * would then measure the server. One thread, epoll, non-blocking sockets, HTTP/1.1 keep-alive, chunked
 * transfer encoding, one timerfd on absolute CLOCK_MONOTONIC deadlines.
 *
 * Endpoints: GET /v2/health/ready (200), GET /v2/models/{m} (metadata: inputs text_input, max_tokens,
 * stream), POST /v2/models/{m}/generate_stream (SSE, one `data: {"text_output":" tok"}` event per token;
 * max_tokens of them, or --tokens N). The first token is due --ttft-us after the request arrived, the next
 * ones every --gap-us after it (absolute deadlines: lateness never accumulates). Wake-ups fall on a
 * --quantum-us grid (default 100; 0: none), so a token goes out up to a quantum after its deadline, never
 * before. The response head goes out in the same write as the first token, as a streaming Triton server
 * does.
 *
 * Stamps (CLOCK_MONOTONIC, the clock of Python's time.perf_counter_ns on Linux): arrival_ns, when the read
 * that completed the request's head and body returned; first_due_ns = arrival + ttft; first_write_ns, just
 * before the first token's write() (the benchmark's truth for "first token sent"); first_sent_ns, just
 * after it returned; last_write_ns, just before the last token's write(). Plus the FNV-1a 64 hash of the
 * raw text_input JSON string (the bytes between its quotes), by which the benchmark joins each row to the
 * generator's record exactly.
 *
 * The timing file (--timing-file) is written on SIGTERM or SIGINT, then the server exits 0:
 *   # slm-loadgen stream_server timing v1
 *   # ttft_us=5000 gap_us=1000 clock=CLOCK_MONOTONIC
 *   seq conn arrival_ns first_due_ns first_write_ns first_sent_ns last_write_ns tokens text_fnv1a64
 *   0 1 1234 ... 64 9f3a...      (a row per generate_stream request, in arrival order; 0 = never written)
 *   # end requests=N events=E cpu_user_s=U cpu_sys_s=S late_p50_us late_p99_us late_p999_us late_max_us
 * `late`: how long after its deadline each token write happened (quantum plus wake-up delay).
 * Build: gcc -O2 -o stream_server stream_server.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD 65536
#define MAX_BODY (4 << 20)
#define LATE_BUCKETS 100000 /* lateness histogram: 1 us buckets up to 100 ms, the last one is overflow */

typedef struct {
    uint64_t arrival, first_due, first_write, first_sent, last_write, hash;
    uint32_t tokens, conn;
} Row;

typedef struct Conn {
    int fd;
    uint32_t id;
    char *in, *out;                      /* bytes read and not yet handled; bytes waiting to be written */
    size_t in_len, in_cap, out_len, out_off, out_cap;
    int streaming;     /* a generate_stream response is in progress */
    int close_after;   /* close once the current response is out */
    size_t row;        /* index into rows of the current stream */
    uint32_t total, sent;
    uint64_t first_due, due;
    long heap_pos;     /* -1 when not in the heap */
    uint64_t arrival_pending; /* stamp of the read that completed the request being handled */
} Conn;

static uint64_t g_ttft_ns = 5000000, g_gap_ns = 1000000;
static Row *g_rows;
static size_t g_nrows, g_caprows;
static Conn **g_heap;
static size_t g_heap_n, g_heap_cap;
static uint64_t *g_late, g_events; /* token-write lateness histogram; token writes */
static uint32_t g_fixed_tokens = 0, g_next_conn_id = 1;
static int g_ep, g_tfd;
static uint64_t g_armed = 0, g_quantum_ns = 100000; /* the timerfd's deadline; the wake-up grid (arm_timer) */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) { perror(what); exit(2); }

static void *xrealloc(void *p, size_t n) {
    if (!(p = realloc(p, n))) die("realloc"); /* the old block leaks, but the process ends here */
    return p;
}

/* ---- min-heap of streams keyed by their next due time ---- */
static void heap_swap(size_t a, size_t b) {
    Conn *t = g_heap[a]; g_heap[a] = g_heap[b]; g_heap[b] = t;
    g_heap[a]->heap_pos = (long)a;
    g_heap[b]->heap_pos = (long)b;
}

static void heap_up(size_t i) {
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (g_heap[p]->due <= g_heap[i]->due) break;
        heap_swap(i, p);
        i = p;
    }
}

static void heap_down(size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < g_heap_n && g_heap[l]->due < g_heap[m]->due) m = l;
        if (r < g_heap_n && g_heap[r]->due < g_heap[m]->due) m = r;
        if (m == i) return;
        heap_swap(i, m);
        i = m;
    }
}

static void heap_push(Conn *c) {
    if (g_heap_n == g_heap_cap) {
        g_heap_cap = g_heap_cap ? 2 * g_heap_cap : 1024;
        g_heap = xrealloc(g_heap, g_heap_cap * sizeof *g_heap);
    }
    g_heap[g_heap_n] = c;
    c->heap_pos = (long)g_heap_n;
    heap_up(g_heap_n++);
}

static void heap_remove(Conn *c) {
    size_t i = (size_t)c->heap_pos;
    c->heap_pos = -1;
    g_heap_n--;
    if (i != g_heap_n) {
        g_heap[i] = g_heap[g_heap_n];
        g_heap[i]->heap_pos = (long)i;
        heap_up(i);
        heap_down((size_t)g_heap[i]->heap_pos);
    }
}

/* Arm the timerfd for the earliest due token, rounded up to the --quantum-us grid. Each distinct wake-up
 * costs a timerfd_settime and a context switch (tens of microseconds on a VM), and with hundreds of streams
 * in flight nearly every token has its own deadline: on the grid, the tokens due within one quantum share one
 * wake-up, at the price of writing them up to one quantum late. That does not blur the benchmark: every write
 * is stamped, and the truth is the stamps. A later deadline leaves an earlier armed one in place (it fires,
 * finds nothing due, re-arms). Polling instead of sleeping was tried and rejected: on a 2-vCPU VM a core kept
 * 100 % busy made the host stall both vCPUs for milliseconds. */
static void arm_timer(uint64_t due) {
    uint64_t want = g_quantum_ns > 1 ? (due + g_quantum_ns - 1) / g_quantum_ns * g_quantum_ns : due;
    if (want == g_armed || (g_armed && want > g_armed)) return;
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(want / 1000000000ull);
    its.it_value.tv_nsec = (long)(want % 1000000000ull);
    if (timerfd_settime(g_tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
    g_armed = want;
}

/* ---- output ---- */
static void conn_close(Conn *c);

static void out_append(Conn *c, const char *data, size_t n) {
    while (c->out_len + n > c->out_cap)
        c->out = xrealloc(c->out, c->out_cap = c->out_cap ? 2 * c->out_cap : 4096);
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

static void watch_out(Conn *c, int on) { /* ask epoll for writability while bytes wait, and only then */
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is pending; returns -1 when the connection died (it is then closed and freed). */
static int flush_out(Conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                watch_out(c, 1);
                return 0;
            }
            conn_close(c);
            return -1;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off) {
        c->out_off = c->out_len = 0;
        watch_out(c, 0);
    }
    return 0;
}

/* Send bytes now (or queue them behind bytes already waiting); -1 when the connection died. */
static int send_bytes(Conn *c, const char *data, size_t n) {
    if (c->out_len == 0) {
        ssize_t w = write(c->fd, data, n);
        if (w == (ssize_t)n) return 0;
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_close(c);
                return -1;
            }
            w = 0;
        }
        data += w;
        n -= (size_t)w;
    }
    out_append(c, data, n);
    return flush_out(c);
}

static void conn_close(Conn *c) {
    if (c->heap_pos >= 0) heap_remove(c);
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in), free(c->out), free(c);
}

/* ---- request parsing ---- */
static uint64_t fnv1a(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

static const char *skip_ws(const char *q, const char *end) {
    while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
    return q;
}

/* Find `"key"` in a JSON body and return a pointer just after its ':' (NULL when absent). */
static const char *json_value(const char *body, size_t n, const char *key) {
    size_t k = strlen(key);
    for (const char *p = body; p + k + 2 <= body + n; p++) {
        p = memchr(p, '"', (size_t)(body + n - p));
        if (!p || p + k + 2 > body + n) return NULL;
        if (memcmp(p + 1, key, k) == 0 && p[k + 1] == '"') {
            const char *q = skip_ws(p + k + 2, body + n);
            if (q < body + n && *q == ':') return skip_ws(q + 1, body + n);
        }
    }
    return NULL;
}

static uint64_t text_hash(const char *body, size_t n) {
    const char *v = json_value(body, n, "text_input");
    if (!v || v >= body + n || *v != '"') return 0;
    const char *s = ++v, *end = body + n;
    while (v < end && *v != '"') v += (*v == '\\') ? 2 : 1;
    if (v > end) v = end;
    return fnv1a(s, (size_t)(v - s));
}

static long max_tokens_of(const char *body, size_t n) {
    const char *v = json_value(body, n, "max_tokens");
    if (!v) return 64;
    if (*v == '[') v++; /* a one-element array is accepted too */
    long t = strtol(v, NULL, 10);
    return t > 0 ? (t > 1000000 ? 1000000 : t) : 64;
}

/* A header's value (case-insensitive name) within the head; returns its length, 0 when absent. */
static size_t header_value(const char *head, size_t n, const char *name, const char **val) {
    size_t k = strlen(name);
    const char *p = memchr(head, '\n', n), *end = head + n;
    while (p && p + 1 + k + 1 < end) {
        p++;
        if (strncasecmp(p, name, k) == 0 && p[k] == ':') {
            const char *v = p + k + 1, *e = memchr(v, '\r', (size_t)(end - v));
            if (!e) e = end;
            while (v < e && *v == ' ') v++;
            *val = v;
            return (size_t)(e - v);
        }
        p = memchr(p, '\n', (size_t)(end - p));
    }
    return 0;
}

/* A small JSON answer; -1 when the connection is gone (closed after a Connection: close request). */
static int simple_reply(Conn *c, const char *status, const char *body) {
    char buf[2048];
    const char *conn_hdr = c->close_after ? "Connection: close\r\n" : "";
    int n = snprintf(buf, sizeof buf, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu"
                     "\r\n%s\r\n%s", status, strlen(body), conn_hdr, body);
    if (send_bytes(c, buf, (size_t)n) < 0) return -1;
    if (c->close_after && c->out_len == 0) {
        conn_close(c);
        return -1;
    }
    return 0;
}

/* A request this server will not handle: answer, then close the connection (its input is dropped). */
static int refuse(Conn *c, const char *status, const char *body) {
    c->close_after = 1;
    c->in_len = 0;
    simple_reply(c, status, body);
    return -1;
}

static void start_stream(Conn *c, uint64_t arrival, const char *body, size_t blen) {
    if (g_nrows == g_caprows) {
        g_caprows = g_caprows ? 2 * g_caprows : 65536;
        g_rows = xrealloc(g_rows, g_caprows * sizeof *g_rows);
    }
    Row *r = &g_rows[g_nrows];
    memset(r, 0, sizeof *r);
    r->arrival = arrival;
    r->first_due = arrival + g_ttft_ns;
    r->hash = text_hash(body, blen);
    r->conn = c->id;
    c->row = g_nrows++;
    c->total = g_fixed_tokens ? g_fixed_tokens : (uint32_t)max_tokens_of(body, blen);
    c->sent = 0;
    c->first_due = c->due = r->first_due;
    c->streaming = 1;
    heap_push(c);
}

/* Handle every complete request in the input buffer (a stream owns the connection until it is done). */
static int handle_requests(Conn *c, uint64_t arrival) {
    while (!c->streaming && c->in_len > 0) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end) {
            return c->in_len <= MAX_HEAD ? 0 : refuse(c, "431 Request Header Fields Too Large", "{}");
        }
        size_t head_len = (size_t)(end - c->in) + 4;
        const char *v;
        size_t vl = header_value(c->in, head_len, "Content-Length", &v);
        size_t body_len = vl ? strtoul(v, NULL, 10) : 0;
        if (header_value(c->in, head_len, "Transfer-Encoding", &v))
            return refuse(c, "411 Length Required", "{\"error\":\"send a Content-Length body\"}");
        if (body_len > MAX_BODY) return refuse(c, "413 Payload Too Large", "{\"error\":\"body too large\"}");
        if (c->in_len < head_len + body_len) return 0; /* the body is still coming */
        vl = header_value(c->in, head_len, "Connection", &v);
        c->close_after = vl >= 5 && strncasecmp(v, "close", 5) == 0;
        const char *body = c->in + head_len;
        char method[8] = {0}, path[512] = {0};
        sscanf(c->in, "%7s %511s", method, path);
        int rc = 0;
        size_t plen = strlen(path);
        if (strcmp(method, "GET") == 0 && strcmp(path, "/v2/health/ready") == 0) {
            rc = simple_reply(c, "200 OK", "");
        } else if (strncmp(path, "/v2/models/", 11) == 0 && plen > 11 && strcmp(method, "GET") == 0 &&
                   !strchr(path + 11, '/')) {
            char meta[1024];
            snprintf(meta, sizeof meta,
                     "{\"name\":\"%s\",\"versions\":[\"1\"],\"platform\":\"ensemble\",\"inputs\":["
                     "{\"name\":\"text_input\",\"datatype\":\"BYTES\",\"shape\":[-1]},"
                     "{\"name\":\"max_tokens\",\"datatype\":\"INT32\",\"shape\":[-1]},"
                     "{\"name\":\"stream\",\"datatype\":\"BOOL\",\"shape\":[-1]}],"
                     "\"outputs\":[{\"name\":\"text_output\",\"datatype\":\"BYTES\",\"shape\":[-1]}]}",
                     path + 11);
            rc = simple_reply(c, "200 OK", meta);
        } else if (strcmp(method, "POST") == 0 && strncmp(path, "/v2/models/", 11) == 0 && plen > 27 &&
                   strcmp(path + plen - 16, "/generate_stream") == 0) {
            start_stream(c, arrival, body, body_len);
        } else {
            rc = simple_reply(c, "404 Not Found", "{\"error\":\"not found\"}");
        }
        if (rc < 0) return -1;
        memmove(c->in, c->in + head_len + body_len, c->in_len - head_len - body_len);
        c->in_len -= head_len + body_len;
    }
    return 0;
}

static void on_readable(Conn *c) {
    for (;;) {
        if (c->in_len > 2 * (MAX_HEAD + MAX_BODY)) { /* a client that never stops sending */
            conn_close(c);
            return;
        }
        if (c->in_cap - c->in_len < 4096)
            c->in = xrealloc(c->in, c->in_cap = c->in_cap ? 2 * c->in_cap : 8192);
        ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0 || errno != EAGAIN) conn_close(c); /* EOF or a reset */
            return;
        }
        uint64_t t = now_ns();
        c->in_len += (size_t)r;
        if (!c->streaming && handle_requests(c, t) < 0) return;
        if (c->streaming) c->arrival_pending = t; /* a pipelined request behind a stream: stamped when read */
    }
}

/* ---- tokens ---- */
static const char HEAD[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n";
static const char EVENT[] = "data: {\"text_output\":\" tok\"}\n\n";

static void send_token(Conn *c) {
    char buf[256];
    size_t n = 0;
    Row *r = &g_rows[c->row];
    if (c->sent == 0) {
        memcpy(buf, HEAD, sizeof HEAD - 1);
        n = sizeof HEAD - 1;
    }
    n += (size_t)sprintf(buf + n, "%zx\r\n%s\r\n", sizeof EVENT - 1, EVENT);
    c->sent++;
    int last = c->sent >= c->total;
    if (last) {
        memcpy(buf + n, "0\r\n\r\n", 5);
        n += 5;
    }
    uint64_t t = now_ns();
    uint64_t late = t > c->due ? (t - c->due) / 1000 : 0;
    g_late[late < LATE_BUCKETS ? late : LATE_BUCKETS - 1]++;
    g_events++;
    int first = c->sent == 1;
    if (first) r->first_write = t;
    r->last_write = t;
    r->tokens = c->sent;
    if (last) {
        c->streaming = 0;
    } else {
        c->due = c->first_due + (uint64_t)c->sent * g_gap_ns;
        heap_push(c);
    }
    if (send_bytes(c, buf, n) < 0) return; /* the connection died: it is closed and out of the heap */
    if (first) r->first_sent = now_ns();
    if (!last) return;
    if (c->close_after) {
        if (c->out_len == 0) conn_close(c);
        return;
    }
    if (c->in_len) handle_requests(c, c->arrival_pending ? c->arrival_pending : now_ns());
}

/* Write every due token; returns when the next one is due (0 when none is pending). */
static uint64_t run_due(void) {
    uint64_t now = now_ns();
    while (g_heap_n && g_heap[0]->due <= now) {
        Conn *c = g_heap[0];
        heap_remove(c);
        send_token(c);
        now = now_ns();
    }
    return g_heap_n ? g_heap[0]->due : 0;
}

/* ---- exit ---- */
static double late_pct(double q) {
    uint64_t total = g_events, seen = 0; /* every event is in the histogram once */
    if (!total) return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    if (want >= total) want = total - 1;
    for (size_t i = 0; i < LATE_BUCKETS; i++) {
        seen += g_late[i];
        if (seen > want) return (double)i;
    }
    return LATE_BUCKETS - 1;
}

static void write_timing(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f, "# slm-loadgen stream_server timing v1\n# ttft_us=%" PRIu64 " gap_us=%" PRIu64
               " clock=CLOCK_MONOTONIC\n", g_ttft_ns / 1000, g_gap_ns / 1000);
    fprintf(f, "seq conn arrival_ns first_due_ns first_write_ns first_sent_ns last_write_ns tokens "
               "text_fnv1a64\n");
    for (size_t i = 0; i < g_nrows; i++) {
        Row *r = &g_rows[i];
        fprintf(f, "%zu %u %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %u %016" PRIx64 "\n",
                i, r->conn, r->arrival, r->first_due, r->first_write, r->first_sent, r->last_write, r->tokens,
                r->hash);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t maxl = 0;
    for (size_t i = 0; i < LATE_BUCKETS; i++)
        if (g_late[i]) maxl = i;
    fprintf(f, "# end requests=%zu events=%" PRIu64 " cpu_user_s=%.3f cpu_sys_s=%.3f late_p50_us=%.0f"
               " late_p99_us=%.0f late_p999_us=%.0f late_max_us=%zu\n",
            g_nrows, g_events, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
            ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, late_pct(0.5), late_pct(0.99), late_pct(0.999),
            maxl);
    if (fclose(f) != 0) die(path);
}

static void usage(void) {
    fprintf(stderr, "usage: stream_server --timing-file PATH [--port N] [--ttft-us US] [--gap-us US]"
                    " [--tokens N] [--quantum-us US]\n  --port 0 (default) picks a free port; the first"
                    " stdout line says `listening on HOST:PORT`\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *timing = NULL;
    int port = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        char *e;
        long long x = strtoll(v, &e, 10);
        if (strcmp(a, "--timing-file") == 0) timing = v;
        else if (*e || x < 0) usage();
        else if (strcmp(a, "--port") == 0) port = (int)x;
        else if (strcmp(a, "--ttft-us") == 0) g_ttft_ns = (uint64_t)x * 1000;
        else if (strcmp(a, "--gap-us") == 0) g_gap_ns = (uint64_t)x * 1000;
        else if (strcmp(a, "--tokens") == 0) g_fixed_tokens = (uint32_t)x;
        else if (strcmp(a, "--quantum-us") == 0) g_quantum_ns = (uint64_t)x * 1000;
        else usage();
    }
    if (!timing) usage();
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    g_late = calloc(LATE_BUCKETS, sizeof *g_late);
    if (!g_late) die("calloc");

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(ls, 4096) < 0) die("listen");
    socklen_t sl = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &sl);

    sigset_t mask; /* SIGTERM, SIGINT come through a signalfd: the loop writes the timing file and exits */
    sigemptyset(&mask), sigaddset(&mask, SIGTERM), sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK);
    g_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    g_ep = epoll_create1(0);
    if (sfd < 0 || g_tfd < 0 || g_ep < 0) die("setup");
    static char LISTEN_TAG, TIMER_TAG, SIGNAL_TAG;
    int fds[3] = {ls, g_tfd, sfd};
    void *tags[3] = {&LISTEN_TAG, &TIMER_TAG, &SIGNAL_TAG};
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tags[i]};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    printf("listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    struct epoll_event events[256];
    uint64_t next_due = 0;
    for (;;) {
        if (next_due) arm_timer(next_due);
        int n = epoll_wait(g_ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &LISTEN_TAG) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    Conn *c = calloc(1, sizeof *c);
                    if (!c) die("calloc");
                    c->fd = fd, c->id = g_next_conn_id++, c->heap_pos = -1;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &cev);
                }
            } else if (p == &TIMER_TAG) {
                uint64_t expirations;
                if (read(g_tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("timerfd read");
                g_armed = 0;
            } else if (p == &SIGNAL_TAG) {
                write_timing(timing);
                return 0;
            } else {
                Conn *c = p;
                uint32_t e = events[i].events;
                if (e & EPOLLOUT) {
                    if (flush_out(c) < 0) continue;
                    if (c->close_after && !c->streaming && c->out_len == 0) {
                        conn_close(c);
                        continue;
                    }
                }
                if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            }
        }
        next_due = run_due();
    }
}

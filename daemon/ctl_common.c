/* What promptctl's operational commands share; see ctl_common.h. */
#include "ctl_common.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd.h"

/* --- command-line values --- */

int ctl_duration_ms(const char *text, int64_t *ms) {
    static const struct {
        const char *suffix;
        double ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || !(v >= 0) || v > 1e12) return -1;
    for (size_t i = 0; i < PD_ARRAY_LEN(units); i++) {
        if (strcmp(end, units[i].suffix)) continue;
        *ms = (int64_t)(v * units[i].ms + 0.5);
        return 0;
    }
    return -1;
}

/* --- Kafka --- */

int ctl_kafka_prop(CtlKafka *k, const char *kv) {
    if (!strchr(kv, '=') || kv[0] == '=' || k->nprops >= CTL_KAFKA_PROPS_MAX) return -1;
    k->props[k->nprops++] = kv;
    return 0;
}

int ctl_kafka_brokers(const CtlKafka *k, char *out, size_t len, uint64_t deadline_ms, char *err,
                      size_t errlen) {
    if (k->brokers) {
        snprintf(out, len, "%s", k->brokers);
        return 0;
    }
    /* promptd writes the file once its embedded broker listens: wait for it a little. */
    for (;;) {
        FILE *f = fopen(k->bootstrap_file, "r");
        if (f) {
            bool ok = fgets(out, (int)len, f) != NULL;
            fclose(f);
            out[strcspn(out, "\r\n")] = '\0';
            if (ok && *out) return 0;
        }
        if (pd_mono_ms() >= deadline_ms) break;
        usleep(100000);
    }
    snprintf(err, errlen,
             "no bootstrap address in %s (is promptd running with "
             "kafka.embedded.bootstrap_file?)",
             k->bootstrap_file);
    return -1;
}

static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk, (void)level, (void)fac, (void)buf;
}

static bool set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err,
                size_t errlen) {
    char why[512];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof why) == RD_KAFKA_CONF_OK) return true;
    snprintf(err, errlen, "Kafka property %s: %s", key, why);
    return false;
}

/* Applies the -X properties to conf; false with err at the first one refused. */
static bool apply_props(const CtlKafka *k, rd_kafka_conf_t *conf, bool *debug, char *err,
                        size_t errlen) {
    for (size_t i = 0; i < k->nprops; i++) {
        char key[256];
        const char *eq = strchr(k->props[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eq - k->props[i]), k->props[i]);
        *debug = *debug || !strcmp(key, "debug");
        if (!set(conf, key, eq + 1, err, errlen)) return false;
    }
    return true;
}

int ctl_kafka_check(const CtlKafka *k, char *err, size_t errlen) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bool debug = false, ok = apply_props(k, conf, &debug, err, errlen);
    rd_kafka_conf_destroy(conf);
    return ok ? 0 : -1;
}

rd_kafka_t *ctl_kafka_client(const CtlKafka *k, const char *brokers, rd_kafka_type_t type,
                             rd_kafka_conf_t *conf, char *err, size_t errlen) {
    char group[64], why[512];
    bool debug = false;
    if (!conf) conf = rd_kafka_conf_new();
    bool ok = set(conf, "bootstrap.servers", brokers, err, errlen) &&
              set(conf, "client.id", "promptctl", err, errlen);
    if (type == RD_KAFKA_CONSUMER) {
        /* The consumer only assigns partitions: the group is never joined nor committed,
         * but librdkafka wants one for a consumer handle. */
        snprintf(group, sizeof group, "promptctl-%d", (int)getpid());
        ok = ok && set(conf, "group.id", group, err, errlen) &&
             set(conf, "enable.auto.commit", "false", err, errlen) &&
             set(conf, "fetch.wait.max.ms", "10", err, errlen);
    } else {
        ok = ok && set(conf, "linger.ms", "0", err, errlen);
    }
    ok = ok && apply_props(k, conf, &debug, err, errlen);
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (!debug) rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_t *rk = rd_kafka_new(type, conf, why, sizeof why);
    if (!rk) {
        snprintf(err, errlen, "Kafka: %s", why);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

static int remaining_ms(uint64_t deadline_ms) {
    uint64_t now = pd_mono_ms();
    return now >= deadline_ms ? 0
                              : (int)(deadline_ms - now < 3600000 ? deadline_ms - now : 3600000);
}

/* The partition count of topic, waiting for a broker until deadline_ms; 0 if none. */
static int partitions_of(rd_kafka_t *rk, const char *topic, uint64_t deadline_ms,
                         const char **why) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    int parts = 0;
    *why = "no broker answered";
    while (rkt && parts == 0) {
        const rd_kafka_metadata_t *md = NULL;
        int wait = remaining_ms(deadline_ms);
        rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, wait < 2000 ? wait : 2000);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->topic_cnt == 1 && !md->topics[0].err)
                parts = md->topics[0].partition_cnt;
            else if (md->topic_cnt == 1)
                *why = rd_kafka_err2str(md->topics[0].err);
            rd_kafka_metadata_destroy(md);
        }
        if (parts == 0 && remaining_ms(deadline_ms) == 0) break;
        if (parts == 0) usleep(100000); /* an error may come back at once: do not spin */
    }
    if (rkt) rd_kafka_topic_destroy(rkt);
    return parts;
}

int ctl_kafka_follow(rd_kafka_t *consumer, const char *const *topics, size_t n,
                     uint64_t deadline_ms, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(16);
    int rc = 0;
    for (size_t t = 0; t < n && rc == 0; t++) {
        const char *why;
        int parts = partitions_of(consumer, topics[t], deadline_ms, &why);
        if (parts == 0) {
            snprintf(err, errlen, "topic %s: %s", topics[t], why);
            rc = PD_ETIMEOUT;
        }
        for (int p = 0; p < parts && rc == 0; p++) {
            int64_t low, high;
            int wait = remaining_ms(deadline_ms);
            rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(consumer, topics[t], p, &low,
                                                                     &high, wait ? wait : 1);
            if (e) {
                snprintf(err, errlen, "%s/%d: %s", topics[t], p, rd_kafka_err2str(e));
                rc = e == RD_KAFKA_RESP_ERR__TIMED_OUT ? PD_ETIMEOUT : PD_EIO;
            } else {
                rd_kafka_topic_partition_list_add(list, topics[t], p)->offset = high;
            }
        }
    }
    if (rc == 0) {
        rd_kafka_resp_err_t e = rd_kafka_assign(consumer, list);
        if (e) snprintf(err, errlen, "assign: %s", rd_kafka_err2str(e)), rc = PD_EIO;
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

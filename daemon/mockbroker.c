/* The embedded mock cluster and its bootstrap file. */
#include "mockbroker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pd.h"

struct MockBroker {
    rd_kafka_t *rk; /* the handle the cluster lives in; it never connects anywhere */
    rd_kafka_mock_cluster_t *cluster;
};

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    pd_log(level, PD_MOD_BROKER, "%s: %s", fac, buf);
}

int mockbroker_start(MockBroker **out, int brokers, const char *const *topics, size_t ntopics,
                     int partitions, char *err, size_t errlen) {
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, on_log);
    /* The host handle has no bootstrap.servers by design; librdkafka warns about that at
     * level 4, which would only confuse an operator. */
    rd_kafka_conf_set(conf, "log_level", "3", why, sizeof why);

    MockBroker *mb = pd_xcalloc(1, sizeof *mb);
    mb->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    if (!mb->rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "cannot create the embedded broker's handle: %s", why);
        free(mb);
        return PD_ERR;
    }
    mb->cluster = rd_kafka_mock_cluster_new(mb->rk, brokers);
    if (!mb->cluster) {
        snprintf(err, errlen, "cannot start the embedded mock cluster");
        mockbroker_stop(mb);
        return PD_ERR;
    }

    int replicas = brokers < 3 ? brokers : 3;
    for (size_t i = 0; i < ntopics; i++) {
        rd_kafka_resp_err_t rc =
            rd_kafka_mock_topic_create(mb->cluster, topics[i], partitions, replicas);
        if (rc) {
            snprintf(err, errlen, "cannot create topic %s: %s", topics[i], rd_kafka_err2str(rc));
            mockbroker_stop(mb);
            return PD_ERR;
        }
    }
    *out = mb;
    return PD_OK;
}

const char *mockbroker_bootstraps(const MockBroker *mb) {
    return rd_kafka_mock_cluster_bootstraps(mb->cluster);
}

rd_kafka_mock_cluster_t *mockbroker_cluster(MockBroker *mb) {
    return mb->cluster;
}

int mockbroker_write_bootstrap(const MockBroker *mb, const char *path, char *err, size_t errlen) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        return PD_EIO;
    }
    int bad = fprintf(f, "%s\n", mockbroker_bootstraps(mb)) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return PD_EIO;
    }
    return PD_OK;
}

void mockbroker_stop(MockBroker *mb) {
    if (!mb) return;
    if (mb->cluster) rd_kafka_mock_cluster_destroy(mb->cluster);
    if (mb->rk) rd_kafka_destroy(mb->rk);
    free(mb);
}

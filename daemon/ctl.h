/*
 * promptctl's larger commands, each in its own ctl_*.c: argv as main gets it, minus the
 * command name; the result is the process's exit status.
 */
#ifndef PD_CTL_H
#define PD_CTL_H

/* promptctl train and evaluate (ctl_train.c): triplet training of the encoder and its
 * held-out scores. Exit 0 done, 64 usage, 65 bad data, 70 out of memory, 73 the model
 * could not be written, 78 a model file refused. */
int ctl_train(int argc, char **argv);
int ctl_evaluate(int argc, char **argv);

/* promptctl simulate: a scenario played against promptd through Kafka. */
int ctl_simulate(int argc, char **argv);

/* promptctl send: one prompt through promptd, its decision or dead letter printed
 * (ctl_send.c). Exit 0 decided, 1 dead-lettered, 64, 69 Kafka unreachable, 75 timeout. */
int ctl_send(int argc, char **argv);

/* promptctl replay: logged decisions and reward events re-scored by a pack's reward()
 * (ctl_replay.c). Exit 0, 1 a pack failed to load, 64, 66 an input unreadable. */
int ctl_replay(int argc, char **argv);

/* promptctl status and top: the admin endpoint's /metrics and /healthz as one screen or
 * a live view (ctl_status.c). status exits 0 ready or degraded, 1 failing, 64, 69
 * unreachable; top 0, 64, 69 (--once only). */
int ctl_status(int argc, char **argv);
int ctl_top(int argc, char **argv);

/* Where promptctl finds the running promptd's admin endpoint: given (--admin), else
 * $PROMPTD_ADMIN, else /run/promptd/admin.sock if it exists, else 127.0.0.1:9464. */
const char *ctl_admin_target(const char *given);

#endif

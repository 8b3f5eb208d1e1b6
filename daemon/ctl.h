/*
 * promptctl's larger commands, each in its own ctl_*.c: argv as main gets it, minus the
 * command name; the result is the process's exit status.
 */
#ifndef PD_CTL_H
#define PD_CTL_H

/* promptctl simulate: a scenario played against promptd through Kafka. */
int ctl_simulate(int argc, char **argv);

/* Where promptctl finds the running promptd's admin endpoint: given (--admin), else
 * $PROMPTD_ADMIN, else /run/promptd/admin.sock if it exists, else 127.0.0.1:9464. */
const char *ctl_admin_target(const char *given);

#endif

/*
 * promptctl's larger commands, each in its own ctl_*.c: argv as main gets it, minus the
 * command name; the result is the process's exit status.
 */
#ifndef PD_CTL_H
#define PD_CTL_H

/* promptctl simulate: a scenario played against promptd through Kafka. */
int ctl_simulate(int argc, char **argv);

#endif

/*
 * libFuzzer harness: decoding of prompts and reward events (daemon/message.h), then the
 * encoding the pipeline does next: a decision for a good prompt, a dead letter for a bad
 * message. The payload comes straight off a Kafka topic, so any bytes must give either a
 * decoded message or a reason with a sentence, never a crash or a leak.
 */
#include <stdlib.h>
#include <string.h>

#include "../daemon/message.h"

/* prompt.max_bytes's default; inputs past it exercise the size check. */
#define MAX_BYTES (64 * 1024)
/* Small, so that the cut of a long payload at a character boundary is reached often. */
#define MAX_DEAD_PAYLOAD 64

static void check_error(MsgReason r, const char *err) {
    /* A refusal must name a known reason and say why in words. */
    if (r >= MSG_REASON_COUNT || !err[0]) abort();
}

static void dead_letter(MsgReason r, const char *err, const uint8_t *data, size_t size) {
    MsgSource src = {"promptd.prompts", 3, 42, -1};
    MsgBuf out = {0};
    if (msg_encode_dead_letter(&out, r, err, &src, data, size, MAX_DEAD_PAYLOAD)) abort();
    msg_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512] = "";
    Prompt p;
    MsgReason r = msg_decode_prompt(&p, data, size, MAX_BYTES, err, sizeof err);
    if (r == MSG_OK) {
        /* The decision quotes the prompt's id, session and (as the rendered prompt) text. */
        Decision d = {"fuzz", p.text, p.text_len, 0.5, 0.25, "pack", "v1", 7, 1700000000000};
        MsgBuf out = {0};
        if (msg_encode_decision(&out, &p, &d)) abort();
        msg_buf_free(&out);
        msg_prompt_free(&p);
    } else {
        check_error(r, err);
        if (p.root) abort(); /* a refused prompt keeps nothing */
        dead_letter(r, err, data, size);
    }

    err[0] = 0;
    RewardEvent ev;
    r = msg_decode_reward(&ev, data, size, MAX_BYTES, err, sizeof err);
    if (r == MSG_OK) {
        msg_reward_free(&ev);
    } else {
        check_error(r, err);
        if (ev.root) abort();
    }
    return 0;
}

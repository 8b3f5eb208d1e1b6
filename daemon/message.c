/* Prompt decoding and decision / dead-letter encoding with jansson. */
#include "message.h"

#include <inttypes.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static const char *const reason_names[MSG_REASON_COUNT] = {
    [MSG_OK] = "ok",
    [MSG_TOO_LARGE] = "too_large",
    [MSG_INVALID_UTF8] = "invalid_utf8",
    [MSG_INVALID_JSON] = "invalid_json",
    [MSG_NOT_AN_OBJECT] = "not_an_object",
    [MSG_MISSING_ID] = "missing_id",
    [MSG_INVALID_ID] = "invalid_id",
    [MSG_MISSING_TEXT] = "missing_text",
    [MSG_INVALID_TEXT] = "invalid_text",
    [MSG_INVALID_FIELD] = "invalid_field",
    [MSG_NO_TEMPLATE] = "no_template",
    [MSG_RENDER_ERROR] = "render_error",
};

const char *msg_reason_name(MsgReason reason) {
    return reason < MSG_REASON_COUNT ? reason_names[reason] : "unknown";
}

bool msg_utf8_valid(const void *s, size_t len, size_t *bad_at) {
    const utf8proc_uint8_t *p = s;
    size_t i = 0;
    while (i < len) {
        /* ASCII needs no decoding, and is nearly all of a typical alarm. */
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n < 0) {
            *bad_at = i;
            return false;
        }
        i += (size_t)n;
    }
    return true;
}

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* --- decoding --- */

static MsgReason decode_id_of(json_t *root, char *out, size_t *out_len, char *err, size_t errlen) {
    json_t *id = json_object_get(root, "id");
    if (!id) {
        snprintf(err, errlen,
                 "the message has no \"id\" field; every prompt needs a unique id "
                 "and every reward names the prompt it scores");
        return MSG_MISSING_ID;
    }

    if (json_is_integer(id)) {
        *out_len =
            (size_t)snprintf(out, MSG_ID_MAX + 1, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
        return MSG_OK;
    }
    if (!json_is_string(id)) {
        snprintf(err, errlen, "\"id\" is %s; it must be a string or an integer",
                 json_type_name(id));
        return MSG_INVALID_ID;
    }

    size_t len = json_string_length(id);
    if (len == 0 || len > MSG_ID_MAX || memchr(json_string_value(id), 0, len)) {
        snprintf(err, errlen, "\"id\" must be 1 to %d bytes without NUL, got %zu bytes", MSG_ID_MAX,
                 len);
        return MSG_INVALID_ID;
    }
    memcpy(out, json_string_value(id), len);
    out[len] = 0;
    *out_len = len;
    return MSG_OK;
}

static MsgReason decode_id(Prompt *p, char *err, size_t errlen) {
    return decode_id_of(p->root, p->id, &p->id_len, err, errlen);
}

static bool is_blank(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (!strchr(" \t\r\n\v\f", s[i])) return false;
    return true;
}

static MsgReason decode_text(Prompt *p, char *err, size_t errlen) {
    json_t *text = json_object_get(p->root, "text");
    if (!text) {
        snprintf(err, errlen, "the prompt has no \"text\" field; it carries the alarm or request");
        return MSG_MISSING_TEXT;
    }
    if (!json_is_string(text)) {
        snprintf(err, errlen, "\"text\" is %s; it must be a string", json_type_name(text));
        return MSG_INVALID_TEXT;
    }
    p->text = json_string_value(text);
    p->text_len = json_string_length(text);
    if (is_blank(p->text, p->text_len)) {
        snprintf(err, errlen, "\"text\" is empty; there is nothing to choose a template for");
        return MSG_MISSING_TEXT;
    }
    return MSG_OK;
}

static MsgReason decode_optional(Prompt *p, char *err, size_t errlen) {
    json_t *session = json_object_get(p->root, "session");
    if (session && !json_is_null(session)) {
        if (!json_is_string(session)) {
            snprintf(err, errlen, "\"session\" is %s; it must be a string",
                     json_type_name(session));
            return MSG_INVALID_FIELD;
        }
        p->session = json_string_value(session);
        p->session_len = json_string_length(session);
    }

    json_t *attrs = json_object_get(p->root, "attrs");
    if (attrs && !json_is_null(attrs)) {
        if (!json_is_object(attrs)) {
            snprintf(err, errlen, "\"attrs\" is %s; it must be an object", json_type_name(attrs));
            return MSG_INVALID_FIELD;
        }
        p->attrs = attrs;
    }
    return MSG_OK;
}

/* The checks every message shares: size, UTF-8, JSON, an object. On MSG_OK *root is the
 * parsed object (the caller owns it). what names the message kind in errors. */
static MsgReason decode_object(json_t **root, const void *payload, size_t len, size_t max_bytes,
                               const char *what, char *err, size_t errlen) {
    *root = NULL;
    if (len > max_bytes) {
        snprintf(err, errlen, "the message is %zu bytes, more than prompt.max_bytes (%zu)", len,
                 max_bytes);
        return MSG_TOO_LARGE;
    }

    size_t bad_at;
    if (!payload || !msg_utf8_valid(payload, len, &bad_at)) {
        snprintf(err, errlen,
                 payload ? "the message is not valid UTF-8 (bad byte at offset %zu)"
                         : "the message is empty (a null payload)",
                 payload ? bad_at : 0);
        return payload ? MSG_INVALID_UTF8 : MSG_INVALID_JSON;
    }

    json_error_t jerr;
    *root = json_loadb(payload, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!*root) {
        snprintf(err, errlen, "the message is not valid JSON: %s at line %d column %d", jerr.text,
                 jerr.line, jerr.column);
        return MSG_INVALID_JSON;
    }
    if (!json_is_object(*root)) {
        snprintf(err, errlen, "the message is %s; %s is a JSON object with an id",
                 json_type_name(*root), what);
        json_decref(*root);
        *root = NULL;
        return MSG_NOT_AN_OBJECT;
    }
    return MSG_OK;
}

MsgReason msg_decode_prompt(Prompt *p, const void *payload, size_t len, size_t max_bytes, char *err,
                            size_t errlen) {
    memset(p, 0, sizeof *p);
    MsgReason r = decode_object(&p->root, payload, len, max_bytes, "a prompt", err, errlen);
    if (r == MSG_OK) r = decode_id(p, err, errlen);
    if (r == MSG_OK) r = decode_text(p, err, errlen);
    if (r == MSG_OK) r = decode_optional(p, err, errlen);
    if (r != MSG_OK) msg_prompt_free(p);
    return r;
}

void msg_prompt_free(Prompt *p) {
    json_decref(p->root);
    memset(p, 0, sizeof *p);
}

MsgReason msg_decode_reward(RewardEvent *r, const void *payload, size_t len, size_t max_bytes,
                            char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    MsgReason why = decode_object(&r->root, payload, len, max_bytes, "a reward event", err, errlen);
    if (why == MSG_OK) why = decode_id_of(r->root, r->id, &r->id_len, err, errlen);
    if (why != MSG_OK) msg_reward_free(r);
    return why;
}

void msg_reward_free(RewardEvent *r) {
    json_decref(r->root);
    memset(r, 0, sizeof *r);
}

/* --- encoding --- */

void msg_buf_free(MsgBuf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Serialises v into out, growing it as needed. Steals the reference to v. */
static int dump_into(MsgBuf *out, json_t *v) {
    if (!v) return -1;
    size_t need = json_dumpb(v, NULL, 0, JSON_COMPACT);
    if (need == 0) {
        json_decref(v);
        return -1;
    }
    if (need > out->cap) {
        char *grown = realloc(out->data, need);
        if (!grown) {
            json_decref(v);
            return -1;
        }
        out->data = grown;
        out->cap = need;
    }
    out->len = json_dumpb(v, out->data, out->cap, JSON_COMPACT);
    json_decref(v);
    return out->len == need ? 0 : -1;
}

/* --- a JSON writer for the hot path ---
 * Decisions are written for every prompt, and building a jansson tree to print it cost
 * more than decoding the prompt. The shape is fixed and every string is already valid
 * UTF-8, so escaping is all there is to it; tests parse the output back with jansson. */

static int buf_reserve(MsgBuf *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

static void put(MsgBuf *b, const char *s, size_t len) {
    memcpy(b->data + b->len, s, len);
    b->len += len;
}

/* Writes s as a JSON string. Reserves its own room: at most 6 bytes per input byte. */
static int put_string(MsgBuf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    if (len > SIZE_MAX / 6 - 2 || buf_reserve(b, len * 6 + 2)) return -1;

    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

/* Writes a literal that needs no escaping. */
static int put_raw(MsgBuf *b, const char *s) {
    size_t len = strlen(s);
    if (buf_reserve(b, len)) return -1;
    put(b, s, len);
    return 0;
}

static int put_int(MsgBuf *b, int64_t v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, v);
    if (buf_reserve(b, (size_t)n)) return -1;
    put(b, tmp, (size_t)n);
    return 0;
}

/* A probability with enough digits to recompute importance weights exactly enough, and
 * no more: 1/3 prints as 0.333333333333. */
static int put_probability(MsgBuf *b, double p) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%.12g", p);
    if (buf_reserve(b, (size_t)n)) return -1;
    put(b, tmp, (size_t)n);
    return 0;
}

int msg_encode_decision(MsgBuf *out, const Prompt *p, const Decision *d) {
    out->len = 0;
    int bad = put_raw(out, "{\"id\":") || put_string(out, p->id, p->id_len);
    if (p->session)
        bad = bad || put_raw(out, ",\"session\":") || put_string(out, p->session, p->session_len);
    bad = bad || put_raw(out, ",\"template\":") ||
          put_string(out, d->template_name, strlen(d->template_name));
    bad = bad || put_raw(out, ",\"prompt\":") || put_string(out, d->prompt, d->prompt_len);
    bad = bad || put_raw(out, ",\"p\":") || put_probability(out, d->p);
    if (isfinite(d->value))
        bad = bad || put_raw(out, ",\"value\":") || put_probability(out, d->value);
    bad = bad || put_raw(out, ",\"pack\":") || put_string(out, d->pack, strlen(d->pack));
    bad = bad || put_raw(out, ",\"script_version\":") ||
          put_string(out, d->script_version, strlen(d->script_version));
    bad = bad || put_raw(out, ",\"policy_version\":") || put_int(out, d->policy_version);
    bad = bad || put_raw(out, ",\"ts\":") || put_int(out, d->ts_ms) || put_raw(out, "}");
    return bad ? -1 : 0;
}

static char *base64(const unsigned char *in, size_t len) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len) v |= in[i + 2];
        *o++ = alphabet[v >> 18 & 63];
        *o++ = alphabet[v >> 12 & 63];
        *o++ = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
        *o++ = i + 2 < len ? alphabet[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* The longest prefix of s[0..len) that is at most max bytes and ends on a character
 * boundary, so that a cut payload stays valid UTF-8. */
static size_t utf8_cut(const unsigned char *s, size_t len, size_t max) {
    if (len <= max) return len;
    size_t cut = max;
    while (cut > 0 && (s[cut] & 0xC0) == 0x80) cut--;
    return cut;
}

static json_t *payload_field(json_t *dl, const void *payload, size_t len, size_t max_payload) {
    size_t bad_at;
    const unsigned char *bytes = payload;
    if (!payload) return dl;

    if (msg_utf8_valid(payload, len, &bad_at)) {
        size_t keep = utf8_cut(bytes, len, max_payload);
        json_object_set_new(dl, "payload", json_stringn((const char *)bytes, keep));
        json_object_set_new(dl, "payload_truncated", json_boolean(keep < len));
    } else {
        size_t keep = len < max_payload / 4 * 3 ? len : max_payload / 4 * 3;
        char *b64 = base64(bytes, keep);
        if (!b64) {
            json_decref(dl);
            return NULL;
        }
        json_object_set_new(dl, "payload_base64", json_string(b64));
        json_object_set_new(dl, "payload_truncated", json_boolean(keep < len));
        free(b64);
    }
    return dl;
}

/* A JSON string of s; a message quoting a cut input may end inside a character, and then
 * the non-ASCII bytes become '?' rather than the field going missing. */
static json_t *utf8_or_ascii(const char *s) {
    json_t *v = json_string(s);
    if (v) return v;
    char safe[1024];
    size_t i = 0;
    for (; s[i] && i < sizeof safe - 1; i++) safe[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    safe[i] = 0;
    return json_string(safe);
}

int msg_encode_dead_letter(MsgBuf *out, MsgReason reason, const char *error, const MsgSource *src,
                           const void *payload, size_t len, size_t max_payload) {
    json_t *dl = json_object();
    if (!dl) return -1;
    json_object_set_new(dl, "reason", json_string(msg_reason_name(reason)));
    json_object_set_new(dl, "error", utf8_or_ascii(error));
    json_object_set_new(dl, "topic", json_string(src->topic));
    json_object_set_new(dl, "partition", json_integer(src->partition));
    json_object_set_new(dl, "offset", json_integer(src->offset));
    if (src->timestamp_ms >= 0)
        json_object_set_new(dl, "timestamp", json_integer(src->timestamp_ms));
    json_object_set_new(dl, "payload_bytes", json_integer((json_int_t)len));
    return dump_into(out, payload_field(dl, payload, len, max_payload));
}

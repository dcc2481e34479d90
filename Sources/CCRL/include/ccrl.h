#ifndef CCRL_H
#define CCRL_H

#include <stddef.h>
#include <stdint.h>

/* A tiny, opaque view of an X.509 CRL parsed by the system OpenSSL. It exposes only what the
   revocation check needs; no OpenSSL type leaks into Swift, so it cannot clash with the
   BoringSSL that swift-nio-ssl embeds. */
typedef struct ccrl_crl ccrl_crl;

/* Parses one DER-encoded CRL; NULL if it is not a CRL. */
ccrl_crl *ccrl_parse_der(const uint8_t *der, size_t length);
void ccrl_free(ccrl_crl *crl);

/* The issuer name as DER. Returns the length; writes it when it fits in `capacity`. */
long ccrl_issuer_der(const ccrl_crl *crl, uint8_t *out, size_t capacity);

/* thisUpdate / nextUpdate as seconds since the epoch. Returns 0 on success, -1 if absent or
   unreadable. */
int ccrl_this_update(const ccrl_crl *crl, int64_t *seconds);
int ccrl_next_update(const ccrl_crl *crl, int64_t *seconds);

/* Number of revoked entries, and the serial number of entry `index` as big-endian magnitude
   bytes (no sign byte). Returns the length, or -1. */
long ccrl_revoked_count(const ccrl_crl *crl);
long ccrl_revoked_serial(const ccrl_crl *crl, long index, uint8_t *out, size_t capacity);

/* 1 if one of the CRL's extensions is critical and not understood by OpenSSL (such a CRL
   must not be used), 0 otherwise. */
int ccrl_has_unhandled_critical_extension(const ccrl_crl *crl);

/* Verifies the CRL's signature with the public key of `issuer_der` (a DER certificate).
   1: valid; 0: invalid; -1: the certificate could not be read. */
int ccrl_verify_signature(const ccrl_crl *crl, const uint8_t *issuer_der, size_t length);

/* The key identifier of the CRL's authority key identifier extension (RFC 5280 §5.2.1).
   Returns its length (writes it when it fits in `capacity`), or -1 when absent. */
long ccrl_authority_key_id(const ccrl_crl *crl, uint8_t *out, size_t capacity);

#endif

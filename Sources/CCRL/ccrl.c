#define _GNU_SOURCE
#include "ccrl.h"

#include <openssl/asn1.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ccrl_crl {
    X509_CRL *crl;
};

ccrl_crl *ccrl_parse_der(const uint8_t *der, size_t length) {
    const unsigned char *cursor = der;
    X509_CRL *crl = d2i_X509_CRL(NULL, &cursor, (long)length);
    if (crl == NULL) return NULL;
    if (cursor != der + length) { /* trailing garbage */
        X509_CRL_free(crl);
        return NULL;
    }
    ccrl_crl *result = malloc(sizeof(ccrl_crl));
    if (result == NULL) {
        X509_CRL_free(crl);
        return NULL;
    }
    result->crl = crl;
    return result;
}

void ccrl_free(ccrl_crl *crl) {
    if (crl == NULL) return;
    X509_CRL_free(crl->crl);
    free(crl);
}

long ccrl_issuer_der(const ccrl_crl *crl, uint8_t *out, size_t capacity) {
    const X509_NAME *name = X509_CRL_get_issuer(crl->crl);
    const unsigned char *bytes = NULL;
    size_t length = 0;
    if (name == NULL || X509_NAME_get0_der((X509_NAME *)name, &bytes, &length) != 1) return -1;
    if (out != NULL && length <= capacity) memcpy(out, bytes, length);
    return (long)length;
}

static int time_to_seconds(const ASN1_TIME *time, int64_t *seconds) {
    struct tm parsed;
    if (time == NULL) return -1;
    memset(&parsed, 0, sizeof(parsed));
    if (ASN1_TIME_to_tm(time, &parsed) != 1) return -1;
    *seconds = (int64_t)timegm(&parsed);
    return 0;
}

int ccrl_this_update(const ccrl_crl *crl, int64_t *seconds) {
    return time_to_seconds(X509_CRL_get0_lastUpdate(crl->crl), seconds);
}

int ccrl_next_update(const ccrl_crl *crl, int64_t *seconds) {
    return time_to_seconds(X509_CRL_get0_nextUpdate(crl->crl), seconds);
}

long ccrl_revoked_count(const ccrl_crl *crl) {
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl->crl);
    return revoked == NULL ? 0 : (long)sk_X509_REVOKED_num(revoked);
}

long ccrl_revoked_serial(const ccrl_crl *crl, long index, uint8_t *out, size_t capacity) {
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl->crl);
    if (revoked == NULL || index < 0 || index >= sk_X509_REVOKED_num(revoked)) return -1;
    const X509_REVOKED *entry = sk_X509_REVOKED_value(revoked, (int)index);
    const ASN1_INTEGER *serial = X509_REVOKED_get0_serialNumber(entry);
    if (serial == NULL) return -1;
    const unsigned char *data = ASN1_STRING_get0_data(serial);
    long length = ASN1_STRING_length(serial);
    while (length > 1 && data[0] == 0) { data++; length--; }
    if (out != NULL && (size_t)length <= capacity) memcpy(out, data, (size_t)length);
    return length;
}

int ccrl_has_unhandled_critical_extension(const ccrl_crl *crl) {
    const STACK_OF(X509_EXTENSION) *extensions = X509_CRL_get0_extensions(crl->crl);
    int count = extensions == NULL ? 0 : sk_X509_EXTENSION_num(extensions);
    for (int i = 0; i < count; i++) {
        X509_EXTENSION *extension = sk_X509_EXTENSION_value(extensions, i);
        if (!X509_EXTENSION_get_critical(extension)) continue;
        int nid = OBJ_obj2nid(X509_EXTENSION_get_object(extension));
        /* The CRL number and authority key id are informational; a critical issuing
           distribution point or delta indicator changes the CRL's scope, which this product
           does not implement, so such a CRL is refused rather than misread. */
        if (nid != NID_crl_number && nid != NID_authority_key_identifier) return 1;
    }
    return 0;
}

int ccrl_verify_signature(const ccrl_crl *crl, const uint8_t *issuer_der, size_t length) {
    const unsigned char *cursor = issuer_der;
    X509 *issuer = d2i_X509(NULL, &cursor, (long)length);
    if (issuer == NULL) return -1;
    EVP_PKEY *key = X509_get0_pubkey(issuer);
    int result = (key != NULL && X509_CRL_verify(crl->crl, key) == 1) ? 1 : 0;
    X509_free(issuer);
    return result;
}

long ccrl_authority_key_id(const ccrl_crl *crl, uint8_t *out, size_t capacity) {
    int critical = 0;
    AUTHORITY_KEYID *identifier = X509_CRL_get_ext_d2i(crl->crl, NID_authority_key_identifier, &critical, NULL);
    if (identifier == NULL) return -1;
    long length = -1;
    if (identifier->keyid != NULL) {
        length = ASN1_STRING_length(identifier->keyid);
        if (out != NULL && (size_t)length <= capacity) memcpy(out, ASN1_STRING_get0_data(identifier->keyid), (size_t)length);
    }
    AUTHORITY_KEYID_free(identifier);
    return length;
}

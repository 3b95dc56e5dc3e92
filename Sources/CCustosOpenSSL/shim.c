#include "custos_openssl.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/ts.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Copies the context and OpenSSL's most recent error into err, and clears the queue. */
static void fail(char *err, size_t errlen, const char *context) {
    unsigned long e = ERR_peek_last_error();
    char detail[256] = "";
    if (e != 0) ERR_error_string_n(e, detail, sizeof detail);
    if (err && errlen) snprintf(err, errlen, "%s%s%s", context, e ? ": " : "", detail);
    ERR_clear_error();
}

void custos_buf_free(custos_buf *b) {
    if (b && b->data) OPENSSL_free(b->data);
    if (b) { b->data = NULL; b->len = 0; }
}

/* Moves a memory BIO's contents into out. */
static int bio_to_buf(BIO *bio, custos_buf *out) {
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);
    if (n < 0) return 0;
    out->data = OPENSSL_malloc(n > 0 ? (size_t)n : 1);
    if (!out->data) return 0;
    memcpy(out->data, p, (size_t)n);
    out->len = (size_t)n;
    return 1;
}

static EVP_PKEY *read_key(const unsigned char *pem, size_t len) {
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

static X509 *read_cert(const unsigned char *data, size_t len) {
    BIO *b = BIO_new_mem_buf(data, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!x) {
        ERR_clear_error();
        const unsigned char *p = data;
        x = d2i_X509(NULL, &p, (long)len);
    }
    return x;
}

/* Every certificate in a PEM bundle; an empty bundle gives an empty stack. */
static STACK_OF(X509) *read_certs(const unsigned char *pem, size_t len) {
    STACK_OF(X509) *certs = sk_X509_new_null();
    if (!certs || len == 0) return certs;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x;
    while (b && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) sk_X509_push(certs, x);
    ERR_clear_error(); /* the loop ends on "no start line" */
    BIO_free(b);
    return certs;
}

/* A store holding only the given anchors: nothing from the system's trust. */
static X509_STORE *anchor_store(const unsigned char *pem, size_t len, int64_t at_time) {
    STACK_OF(X509) *anchors = read_certs(pem, len);
    X509_STORE *store = X509_STORE_new();
    if (!anchors || !store || sk_X509_num(anchors) == 0) {
        sk_X509_pop_free(anchors, X509_free);
        X509_STORE_free(store);
        return NULL;
    }
    for (int i = 0; i < sk_X509_num(anchors); i++) X509_STORE_add_cert(store, sk_X509_value(anchors, i));
    sk_X509_pop_free(anchors, X509_free);
    if (at_time >= 0) {
        X509_VERIFY_PARAM *param = X509_STORE_get0_param(store);
        X509_VERIFY_PARAM_set_time(param, (time_t)at_time);
    }
    return store;
}

int custos_ec_key_generate(custos_buf *out_pem, char *err, size_t errlen) {
    EVP_PKEY *key = EVP_EC_gen("P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    int ok = key && bio && PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) && bio_to_buf(bio, out_pem);
    if (!ok) fail(err, errlen, "cannot generate a P-256 key");
    BIO_free(bio);
    EVP_PKEY_free(key);
    return ok ? 1 : -1;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (!ext) return 0;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

int custos_x509_issue(const char *common_name, const char *organization,
                      const unsigned char *subject_key_pem, size_t subject_key_len,
                      const unsigned char *issuer_cert_pem, size_t issuer_cert_len,
                      const unsigned char *issuer_key_pem, size_t issuer_key_len,
                      int64_t not_before, int64_t not_after, int64_t serial,
                      int is_ca, int timestamping, custos_buf *out_pem, char *err, size_t errlen) {
    int ok = 0;
    EVP_PKEY *subject_key = read_key(subject_key_pem, subject_key_len);
    EVP_PKEY *issuer_key = read_key(issuer_key_pem, issuer_key_len);
    X509 *issuer = issuer_cert_len ? read_cert(issuer_cert_pem, issuer_cert_len) : NULL;
    X509 *x = X509_new();
    BIO *bio = BIO_new(BIO_s_mem());
    if (!subject_key || !issuer_key || (issuer_cert_len && !issuer) || !x || !bio) { fail(err, errlen, "unreadable key or issuer certificate"); goto done; }
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, 2) || !ASN1_INTEGER_set_int64(X509_get_serialNumber(x), serial)
        || !ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before) || !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after)
        || !X509_set_pubkey(x, subject_key)
        || !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name, -1, -1, 0)
        || (organization && *organization && !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)organization, -1, -1, 0))
        || !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name)) {
        fail(err, errlen, "cannot build the certificate"); goto done;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    if (!add_ext(x, &ctx, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE")
        || !add_ext(x, &ctx, NID_key_usage, is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature,nonRepudiation")
        || !add_ext(x, &ctx, NID_subject_key_identifier, "hash")
        || !add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always")
        || (timestamping && !add_ext(x, &ctx, NID_ext_key_usage, "critical,timeStamping"))) {
        fail(err, errlen, "cannot add extensions"); goto done;
    }
    if (!X509_sign(x, issuer_key, EVP_sha256()) || !PEM_write_bio_X509(bio, x) || !bio_to_buf(bio, out_pem)) {
        fail(err, errlen, "cannot sign the certificate"); goto done;
    }
    ok = 1;
done:
    BIO_free(bio);
    X509_free(x);
    X509_free(issuer);
    EVP_PKEY_free(issuer_key);
    EVP_PKEY_free(subject_key);
    return ok ? 1 : -1;
}

static int64_t asn1_time_to_unix(const ASN1_TIME *t) {
    struct tm tm;
    if (!t || !ASN1_TIME_to_tm(t, &tm)) return -1;
    return (int64_t)timegm(&tm);
}

int custos_x509_info(const unsigned char *cert, size_t cert_len, char *common_name, size_t cn_len,
                     int64_t *not_before, int64_t *not_after, custos_buf *out_der, custos_buf *out_spki,
                     char *err, size_t errlen) {
    X509 *x = read_cert(cert, cert_len);
    if (!x) { fail(err, errlen, "not a certificate"); return -1; }
    if (common_name && cn_len) {
        common_name[0] = 0;
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, common_name, (int)cn_len);
    }
    *not_before = asn1_time_to_unix(X509_get0_notBefore(x));
    *not_after = asn1_time_to_unix(X509_get0_notAfter(x));
    unsigned char *der = NULL, *spki = NULL;
    int n = i2d_X509(x, &der);
    int m = i2d_PUBKEY(X509_get0_pubkey(x), &spki);
    X509_free(x);
    if (n <= 0 || m <= 0) { OPENSSL_free(der); OPENSSL_free(spki); fail(err, errlen, "cannot encode the certificate"); return -1; }
    out_der->data = der;
    out_der->len = (size_t)n;
    out_spki->data = spki;
    out_spki->len = (size_t)m;
    return 1;
}

int custos_cms_sign(const unsigned char *cert_pem, size_t cert_len, const unsigned char *key_pem, size_t key_len,
                    const unsigned char *chain_pem, size_t chain_len, const unsigned char *data, size_t data_len,
                    custos_buf *out_der, char *err, size_t errlen) {
    int ok = 0;
    X509 *cert = read_cert(cert_pem, cert_len);
    EVP_PKEY *key = read_key(key_pem, key_len);
    STACK_OF(X509) *chain = read_certs(chain_pem, chain_len);
    BIO *in = BIO_new_mem_buf(data, (int)data_len);
    BIO *out = BIO_new(BIO_s_mem());
    CMS_ContentInfo *cms = NULL;
    if (!cert || !key || !chain || !in || !out) { fail(err, errlen, "unreadable signer certificate or key"); goto done; }
    if (X509_check_private_key(cert, key) != 1) { fail(err, errlen, "the key does not belong to the certificate"); goto done; }
    cms = CMS_sign(cert, key, chain, in, CMS_DETACHED | CMS_BINARY);
    if (!cms || !i2d_CMS_bio(out, cms) || !bio_to_buf(out, out_der)) { fail(err, errlen, "CMS signing failed"); goto done; }
    ok = 1;
done:
    CMS_ContentInfo_free(cms);
    BIO_free(out);
    BIO_free(in);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_free(cert);
    return ok ? 1 : -1;
}

// The version and digest-algorithm fields of a SignedData, which no signature covers and
// OpenSSL does not check: the SignedData version RFC 5652 §5.1 gives its content (1 for
// id-data, 3 for any other, as an RFC 3161 token's TSTInfo), exactly one digest algorithm
// and it is the signer's, one signer info of version 1 (issuerAndSerialNumber). Read through
// the PKCS #7 view of the structure, whose fields OpenSSL makes public.
static int signed_data_fields_are_strict(PKCS7 *p7, long version) {
    if (!p7 || !PKCS7_type_is_signed(p7) || !p7->d.sign) return 0;
    PKCS7_SIGNED *sd = p7->d.sign;
    if (ASN1_INTEGER_get(sd->version) != version || sk_X509_ALGOR_num(sd->md_algs) != 1) return 0;
    if (sk_PKCS7_SIGNER_INFO_num(sd->signer_info) != 1) return 0;
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(sd->signer_info, 0);
    if (ASN1_INTEGER_get(si->version) != 1) return 0;
    return OBJ_cmp(sk_X509_ALGOR_value(sd->md_algs, 0)->algorithm, si->digest_alg->algorithm) == 0;
}

// A signature algorithm OID fit for an RSA or EC signer: OpenSSL picks the algorithm from the
// key and would accept any OID in a signer info, a field no signature covers.
static int known_signature_nid(int nid) {
    return nid == NID_ecdsa_with_SHA256 || nid == NID_ecdsa_with_SHA384 || nid == NID_ecdsa_with_SHA512 || nid == NID_X9_62_id_ecPublicKey
        || nid == NID_rsaEncryption || nid == NID_sha256WithRSAEncryption || nid == NID_sha384WithRSAEncryption
        || nid == NID_sha512WithRSAEncryption || nid == NID_rsassaPss;
}

int custos_cms_verify(const unsigned char *cms_der, size_t cms_len, const unsigned char *data, size_t data_len,
                      const unsigned char *trust_pem, size_t trust_len, int64_t at_time, int check_chain,
                      custos_buf *out_signer_der, char *err, size_t errlen) {
    int result = -1;
    const unsigned char *p = cms_der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)cms_len);
    X509_STORE *store = check_chain ? anchor_store(trust_pem, trust_len, at_time) : X509_STORE_new();
    BIO *content = BIO_new_mem_buf(data, (int)data_len);
    STACK_OF(X509) *signers = NULL;
    if (!cms || p != cms_der + cms_len) { fail(err, errlen, "signature is not a DER CMS structure"); goto done; }
    // Signed bytes are checked as they are: BER that OpenSSL would read the same way as other
    // bytes (another length form, say) is refused, so one signature has one encoding.
    {
        unsigned char *again = NULL;
        int again_len = i2d_CMS_ContentInfo(cms, &again);
        int same = again_len == (int)cms_len && memcmp(again, cms_der, cms_len) == 0;
        OPENSSL_free(again);
        if (!same) { fail(err, errlen, "signature is not in DER (it re-encodes to other bytes)"); result = 0; goto done; }
    }
    {
        const unsigned char *q = cms_der;
        PKCS7 *p7 = d2i_PKCS7(NULL, &q, (long)cms_len);
        int strict = signed_data_fields_are_strict(p7, 1);
        PKCS7_free(p7);
        if (!strict) { fail(err, errlen, "signature: SignedData or signer info version, or digest algorithms, not as CMS v1 writes them"); result = 0; goto done; }
    }
    // Custos signs data (manifests, checkpoints): any other content type names other content.
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed
        || OBJ_obj2nid(CMS_get0_eContentType(cms)) != NID_pkcs7_data) {
        fail(err, errlen, "signature is not SignedData over data (id-data)");
        result = 0;
        goto done;
    }
    if (!store) { fail(err, errlen, "no trust anchors"); goto done; }
    if (!content) { fail(err, errlen, "out of memory"); goto done; }
    if (CMS_verify(cms, NULL, store, content, NULL, CMS_BINARY | (check_chain ? 0 : CMS_NO_SIGNER_CERT_VERIFY)) != 1) {
        fail(err, errlen, "CMS signature does not verify");
        result = 0;
        goto done;
    }
    signers = CMS_get0_signers(cms);
    if (!signers || sk_X509_num(signers) != 1) { fail(err, errlen, "expected exactly one signer"); result = 0; goto done; }
    // The signer info's fields the signature does not cover are checked too: SHA-256, a
    // signature algorithm of the signer's key type (OpenSSL picks it from the key and would
    // accept any OID here), and no unsigned attributes (custos writes none).
    {
        CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
        EVP_PKEY *pk = NULL;
        X509_ALGOR *digest = NULL, *sig = NULL;
        CMS_SignerInfo_get0_algs(si, &pk, NULL, &digest, &sig);
        int dnid = digest ? OBJ_obj2nid(digest->algorithm) : NID_undef;
        int snid = sig ? OBJ_obj2nid(sig->algorithm) : NID_undef;
        int ec = pk && EVP_PKEY_is_a(pk, "EC");
        int ok = dnid == NID_sha256 && CMS_unsigned_get_attr_count(si) <= 0 && known_signature_nid(snid)
                 && (ec ? (snid == NID_ecdsa_with_SHA256 || snid == NID_X9_62_id_ecPublicKey)
                        : (snid == NID_rsaEncryption || snid == NID_sha256WithRSAEncryption || snid == NID_rsassaPss));
        if (!ok) { fail(err, errlen, "signer info: not SHA-256 with the signer's key type, or unsigned attributes"); result = 0; goto done; }
    }
    unsigned char *der = NULL;
    int n = i2d_X509(sk_X509_value(signers, 0), &der);
    if (n <= 0) { fail(err, errlen, "cannot encode the signer"); goto done; }
    out_signer_der->data = der;
    out_signer_der->len = (size_t)n;
    result = 1;
done:
    sk_X509_free(signers);
    BIO_free(content);
    X509_STORE_free(store);
    CMS_ContentInfo_free(cms);
    return result;
}

int custos_ts_request(const unsigned char *sha256, const unsigned char *nonce, size_t nonce_len,
                      custos_buf *out_der, char *err, size_t errlen) {
    int ok = 0;
    TS_REQ *req = TS_REQ_new();
    TS_MSG_IMPRINT *imprint = TS_MSG_IMPRINT_new();
    X509_ALGOR *alg = X509_ALGOR_new();
    ASN1_INTEGER *n = NULL;
    BIGNUM *bn = BN_bin2bn(nonce, (int)nonce_len, NULL);
    unsigned char *der = NULL;
    if (!req || !imprint || !alg || !bn) goto done;
    X509_ALGOR_set0(alg, OBJ_nid2obj(NID_sha256), V_ASN1_NULL, NULL);
    n = BN_to_ASN1_INTEGER(bn, NULL);
    if (!n || !TS_REQ_set_version(req, 1) || !TS_MSG_IMPRINT_set_algo(imprint, alg)
        || !TS_MSG_IMPRINT_set_msg(imprint, (unsigned char *)sha256, 32) || !TS_REQ_set_msg_imprint(req, imprint)
        || !TS_REQ_set_nonce(req, n) || !TS_REQ_set_cert_req(req, 1))
        goto done;
    int len = i2d_TS_REQ(req, &der);
    if (len <= 0) goto done;
    out_der->data = der;
    out_der->len = (size_t)len;
    ok = 1;
done:
    if (!ok) fail(err, errlen, "cannot build the time-stamp request");
    ASN1_INTEGER_free(n);
    BN_free(bn);
    X509_ALGOR_free(alg);
    TS_MSG_IMPRINT_free(imprint);
    TS_REQ_free(req);
    return ok ? 1 : -1;
}

static ASN1_INTEGER *serial_cb(TS_RESP_CTX *ctx, void *data) {
    (void)ctx;
    ASN1_INTEGER *s = ASN1_INTEGER_new();
    if (s) ASN1_INTEGER_set_int64(s, *(int64_t *)data);
    return s;
}

int custos_ts_respond(const unsigned char *request_der, size_t request_len,
                      const unsigned char *cert_pem, size_t cert_len, const unsigned char *key_pem, size_t key_len,
                      const unsigned char *chain_pem, size_t chain_len, const char *policy_oid, int64_t serial,
                      custos_buf *out_der, char *err, size_t errlen) {
    int ok = 0;
    X509 *cert = read_cert(cert_pem, cert_len);
    EVP_PKEY *key = read_key(key_pem, key_len);
    STACK_OF(X509) *chain = read_certs(chain_pem, chain_len);
    ASN1_OBJECT *policy = OBJ_txt2obj(policy_oid, 1);
    TS_RESP_CTX *ctx = TS_RESP_CTX_new();
    BIO *in = BIO_new_mem_buf(request_der, (int)request_len);
    TS_RESP *resp = NULL;
    unsigned char *der = NULL;
    if (!cert || !key || !chain || !policy || !ctx || !in) { fail(err, errlen, "unusable TSA certificate, key or policy"); goto done; }
    if (!TS_RESP_CTX_set_signer_cert(ctx, cert) || !TS_RESP_CTX_set_signer_key(ctx, key)
        || !TS_RESP_CTX_set_signer_digest(ctx, EVP_sha256()) || !TS_RESP_CTX_set_ess_cert_id_digest(ctx, EVP_sha256())
        || !TS_RESP_CTX_set_certs(ctx, chain) || !TS_RESP_CTX_set_def_policy(ctx, policy)
        || !TS_RESP_CTX_add_md(ctx, EVP_sha256()) || !TS_RESP_CTX_set_accuracy(ctx, 1, 0, 0)) {
        fail(err, errlen, "cannot configure the TSA"); goto done;
    }
    TS_RESP_CTX_set_serial_cb(ctx, serial_cb, &serial);
    /* A malformed or unsupported request still gets a signed-status answer (rejection). */
    resp = TS_RESP_create_response(ctx, in);
    int len = resp ? i2d_TS_RESP(resp, &der) : 0;
    if (len <= 0) { fail(err, errlen, "cannot create the time-stamp response"); goto done; }
    out_der->data = der;
    out_der->len = (size_t)len;
    ok = 1;
done:
    TS_RESP_free(resp);
    BIO_free(in);
    TS_RESP_CTX_free(ctx);
    ASN1_OBJECT_free(policy);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_free(cert);
    return ok ? 1 : -1;
}

int custos_ts_signer_not_after(const unsigned char *response_der, size_t response_len, int64_t *not_after, char *err, size_t errlen) {
    const unsigned char *p = response_der;
    TS_RESP *resp = d2i_TS_RESP(NULL, &p, (long)response_len);
    PKCS7 *token = resp ? TS_RESP_get_token(resp) : NULL;
    STACK_OF(X509) *signers = token ? PKCS7_get0_signers(token, NULL, 0) : NULL;
    int ok = signers && sk_X509_num(signers) == 1;
    if (ok) {
        *not_after = asn1_time_to_unix(X509_get0_notAfter(sk_X509_value(signers, 0)));
        ok = *not_after >= 0;
    }
    if (!ok) fail(err, errlen, "the time-stamp carries no single signing certificate with a readable notAfter");
    sk_X509_free(signers);
    TS_RESP_free(resp);
    return ok ? 1 : -1;
}

int custos_ts_verify(const unsigned char *response_der, size_t response_len, const unsigned char *sha256,
                     const unsigned char *trust_pem, size_t trust_len, int64_t at_time,
                     int64_t *gen_time, int64_t *accuracy_micros, custos_buf *out_nonce, char *err, size_t errlen) {
    int result = -1;
    const unsigned char *p = response_der;
    TS_RESP *resp = d2i_TS_RESP(NULL, &p, (long)response_len);
    TS_VERIFY_CTX *ctx = TS_VERIFY_CTX_new();
    X509_STORE *store = anchor_store(trust_pem, trust_len, at_time);
    if (!resp || p != response_der + response_len) { fail(err, errlen, "not a DER TimeStampResp"); X509_STORE_free(store); goto done; }
    if (!ctx || !store) { fail(err, errlen, "no trust anchors for the TSA"); X509_STORE_free(store); goto done; }
    TS_VERIFY_CTX_set_store(ctx, store); /* ctx owns the store from here */
    unsigned char *imprint = OPENSSL_memdup(sha256, 32);
    if (!imprint) goto done;
    TS_VERIFY_CTX_set_imprint(ctx, imprint, 32); /* and the imprint */
    TS_VERIFY_CTX_set_flags(ctx, TS_VFY_VERSION | TS_VFY_SIGNATURE | TS_VFY_IMPRINT);
    if (TS_RESP_verify_response(ctx, resp) != 1) { fail(err, errlen, "time-stamp does not verify"); result = 0; goto done; }
    // What the TSA's signature does not cover is checked as it is: DER exactly (no other
    // encoding of the same values), status granted, a known signature algorithm.
    {
        unsigned char *again = NULL;
        int again_len = i2d_TS_RESP(resp, &again);
        int same = again_len == (int)response_len && memcmp(again, response_der, response_len) == 0;
        OPENSSL_free(again);
        const ASN1_INTEGER *status = TS_STATUS_INFO_get0_status(TS_RESP_get_status_info(resp));
        STACK_OF(PKCS7_SIGNER_INFO) *infos = PKCS7_get_signer_info(TS_RESP_get_token(resp));
        PKCS7_SIGNER_INFO *si = infos && sk_PKCS7_SIGNER_INFO_num(infos) == 1 ? sk_PKCS7_SIGNER_INFO_value(infos, 0) : NULL;
        X509_ALGOR *digest = NULL, *sig = NULL;
        if (si) PKCS7_SIGNER_INFO_get0_algs(si, NULL, &digest, &sig);
        if (!same || ASN1_INTEGER_get(status) != 0 || !si || !sig || !known_signature_nid(OBJ_obj2nid(sig->algorithm))
            || !signed_data_fields_are_strict(TS_RESP_get_token(resp), 3)) {
            fail(err, errlen, "time-stamp response: not DER as received, not granted, or an unknown signature algorithm");
            result = 0;
            goto done;
        }
    }
    TS_TST_INFO *info = TS_RESP_get_tst_info(resp);
    *gen_time = asn1_time_to_unix(TS_TST_INFO_get_time(info));
    *accuracy_micros = -1;
    TS_ACCURACY *acc = TS_TST_INFO_get_accuracy(info);
    if (acc) {
        const ASN1_INTEGER *s = TS_ACCURACY_get_seconds(acc), *ms = TS_ACCURACY_get_millis(acc), *us = TS_ACCURACY_get_micros(acc);
        *accuracy_micros = (s ? ASN1_INTEGER_get(s) * 1000000 : 0) + (ms ? ASN1_INTEGER_get(ms) * 1000 : 0) + (us ? ASN1_INTEGER_get(us) : 0);
    }
    const ASN1_INTEGER *nonce = TS_TST_INFO_get_nonce(info);
    if (nonce) {
        BIGNUM *bn = ASN1_INTEGER_to_BN(nonce, NULL);
        int n = bn ? BN_num_bytes(bn) : 0;
        out_nonce->data = OPENSSL_malloc(n > 0 ? (size_t)n : 1);
        if (bn && out_nonce->data) { BN_bn2bin(bn, out_nonce->data); out_nonce->len = (size_t)n; }
        BN_free(bn);
    }
    result = 1;
done:
    TS_VERIFY_CTX_free(ctx);
    TS_RESP_free(resp);
    return result;
}

int custos_rsa_key_generate(int bits, custos_buf *out_pem, char *err, size_t errlen) {
    EVP_PKEY *key = EVP_RSA_gen((unsigned int)bits);
    BIO *bio = BIO_new(BIO_s_mem());
    int ok = key && bio && PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) && bio_to_buf(bio, out_pem);
    if (!ok) fail(err, errlen, "cannot generate an RSA key");
    BIO_free(bio);
    EVP_PKEY_free(key);
    return ok ? 1 : -1;
}

int custos_spki_kind(const unsigned char *spki_der, size_t spki_len, int *out_bits) {
    const unsigned char *p = spki_der;
    EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (!key) { ERR_clear_error(); return -1; }
    int kind = 0;
    *out_bits = EVP_PKEY_get_bits(key);
    if (EVP_PKEY_is_a(key, "RSA")) {
        kind = 2;
    } else if (EVP_PKEY_is_a(key, "EC")) {
        char group[64] = "";
        size_t len = 0;
        if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) && strcmp(group, "prime256v1") == 0) kind = 1;
    }
    EVP_PKEY_free(key);
    return kind;
}

/* PSS with SHA-256 and a salt as long as the digest, on a digest context. */
static int set_pss(EVP_PKEY_CTX *pctx) {
    return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) > 0
        && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) > 0;
}

int custos_ps256_sign(const unsigned char *key_pem, size_t key_len, const unsigned char *data, size_t data_len,
                      custos_buf *out_sig, char *err, size_t errlen) {
    int ok = 0;
    EVP_PKEY *key = read_key(key_pem, key_len);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    size_t len = 0;
    if (!key || !md || !EVP_PKEY_is_a(key, "RSA")) { fail(err, errlen, "not an RSA private key"); goto done; }
    if (EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, key) != 1 || !set_pss(pctx)
        || EVP_DigestSign(md, NULL, &len, data, data_len) != 1) { fail(err, errlen, "cannot sign"); goto done; }
    out_sig->data = OPENSSL_malloc(len);
    if (!out_sig->data || EVP_DigestSign(md, out_sig->data, &len, data, data_len) != 1) { fail(err, errlen, "cannot sign"); goto done; }
    out_sig->len = len;
    ok = 1;
done:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    return ok ? 1 : -1;
}

int custos_ps256_verify(const unsigned char *spki_der, size_t spki_len, const unsigned char *data, size_t data_len,
                        const unsigned char *sig, size_t sig_len) {
    const unsigned char *p = spki_der;
    EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)spki_len);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = key && md && EVP_PKEY_is_a(key, "RSA") && EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, key) == 1 && set_pss(pctx)
        && EVP_DigestVerify(md, sig, sig_len, data, data_len) == 1;
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    return ok ? 1 : 0;
}

int custos_public_key_of(const unsigned char *key_pem, size_t key_len, custos_buf *out_spki, char *err, size_t errlen) {
    EVP_PKEY *key = read_key(key_pem, key_len);
    unsigned char *der = NULL;
    int n = key ? i2d_PUBKEY(key, &der) : 0;
    EVP_PKEY_free(key);
    if (n <= 0) { fail(err, errlen, "not a private key"); return -1; }
    out_spki->data = der;
    out_spki->len = (size_t)n;
    return 1;
}

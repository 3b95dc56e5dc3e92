#ifndef CUSTOS_OPENSSL_H
#define CUSTOS_OPENSSL_H
/* The one shim between Custos and OpenSSL 3: CMS (RFC 5652), RFC 3161 time-stamps and X.509.
 * Every function takes its inputs as (pointer, length), writes outputs into a custos_buf that
 * the caller frees with custos_buf_free right after copying, and on failure writes a reason
 * (OpenSSL's, never input bytes) into err. Return values: 1 success or valid, 0 invalid,
 * -1 unusable input or internal failure. */
#include <stddef.h>
#include <stdint.h>

typedef struct { unsigned char *data; size_t len; } custos_buf;

/* Releases a buffer filled by one of the functions below. */
void custos_buf_free(custos_buf *b);

/* A new EC P-256 private key as PKCS#8 PEM: for test PKIs, demos and the built-in TSA. */
int custos_ec_key_generate(custos_buf *out_pem, char *err, size_t errlen);

/* Issues an X.509 v3 certificate for subject_key_pem's public key, signed with issuer_key_pem
 * by issuer_cert_pem (self-signed when issuer_cert_len is 0): a CA, a signer, or a TSA
 * (timestamping: critical extendedKeyUsage timeStamping). Times are Unix seconds. */
int custos_x509_issue(const char *common_name, const char *organization,
                      const unsigned char *subject_key_pem, size_t subject_key_len,
                      const unsigned char *issuer_cert_pem, size_t issuer_cert_len,
                      const unsigned char *issuer_key_pem, size_t issuer_key_len,
                      int64_t not_before, int64_t not_after, int64_t serial,
                      int is_ca, int timestamping, custos_buf *out_pem, char *err, size_t errlen);

/* Reads a certificate (PEM or DER): subject CN, validity, its DER encoding and its public key
 * (SubjectPublicKeyInfo, DER). */
int custos_x509_info(const unsigned char *cert, size_t cert_len, char *common_name, size_t cn_len,
                     int64_t *not_before, int64_t *not_after, custos_buf *out_der, custos_buf *out_spki,
                     char *err, size_t errlen);

/* CMS SignedData, detached, over data; carries the signer certificate and chain_pem's certificates. DER. */
int custos_cms_sign(const unsigned char *cert_pem, size_t cert_len, const unsigned char *key_pem, size_t key_len,
                    const unsigned char *chain_pem, size_t chain_len, const unsigned char *data, size_t data_len,
                    custos_buf *out_der, char *err, size_t errlen);

/* Verifies a detached CMS signature over data, with trust anchors only from trust_pem, the chain
 * checked at at_time (Unix seconds; < 0 means now). With check_chain 0 only the signature over
 * the data is checked (no anchors needed): that tells an altered document from a certificate
 * problem. On success out_signer_der is the signer's certificate. */
int custos_cms_verify(const unsigned char *cms_der, size_t cms_len, const unsigned char *data, size_t data_len,
                      const unsigned char *trust_pem, size_t trust_len, int64_t at_time, int check_chain,
                      custos_buf *out_signer_der, char *err, size_t errlen);

/* An RFC 3161 TimeStampReq for a SHA-256 digest, with a nonce, asking for the TSA's certificate. DER. */
int custos_ts_request(const unsigned char *sha256, const unsigned char *nonce, size_t nonce_len,
                      custos_buf *out_der, char *err, size_t errlen);

/* The TSA side: answers a TimeStampReq with a signed TimeStampResp (granted, or rejected with a status). DER. */
int custos_ts_respond(const unsigned char *request_der, size_t request_len,
                      const unsigned char *cert_pem, size_t cert_len, const unsigned char *key_pem, size_t key_len,
                      const unsigned char *chain_pem, size_t chain_len, const char *policy_oid, int64_t serial,
                      custos_buf *out_der, char *err, size_t errlen);

/* Verifies a TimeStampResp: granted, signed by a TSA chaining to trust_pem, imprint equal to sha256.
 * Outputs the genTime (Unix seconds), the accuracy in microseconds (-1 when absent) and the nonce
 * as big-endian bytes (out_nonce). */
/* at_time: check the TSA's certificate chain as of this Unix time (-1: now). */
int custos_ts_verify(const unsigned char *response_der, size_t response_len, const unsigned char *sha256,
                     const unsigned char *trust_pem, size_t trust_len, int64_t at_time,
                     int64_t *gen_time, int64_t *accuracy_micros, custos_buf *out_nonce, char *err, size_t errlen);
/* The notAfter of the certificate that signed a TimeStampResp (carried in it), Unix time. */
int custos_ts_signer_not_after(const unsigned char *response_der, size_t response_len, int64_t *not_after, char *err, size_t errlen);

/* A new RSA private key of `bits` bits as PKCS#8 PEM: for test PKIs (providers may sign with RSA). */
int custos_rsa_key_generate(int bits, custos_buf *out_pem, char *err, size_t errlen);

/* The public key (SubjectPublicKeyInfo DER) of a private key (PEM). */
int custos_public_key_of(const unsigned char *key_pem, size_t key_len, custos_buf *out_spki, char *err, size_t errlen);

/* The kind of a public key (SubjectPublicKeyInfo DER): 1 EC P-256, 2 RSA (out_bits set), 0 other, -1 unreadable. */
int custos_spki_kind(const unsigned char *spki_der, size_t spki_len, int *out_bits);

/* PS256 (RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32) with an RSA private key (PEM): the
 * message signature of providers whose certificate holds an RSA key. */
int custos_ps256_sign(const unsigned char *key_pem, size_t key_len, const unsigned char *data, size_t data_len,
                      custos_buf *out_sig, char *err, size_t errlen);

/* Checks a PS256 signature with an RSA public key (SubjectPublicKeyInfo DER). 1 valid, 0 not. */
int custos_ps256_verify(const unsigned char *spki_der, size_t spki_len, const unsigned char *data, size_t data_len,
                        const unsigned char *sig, size_t sig_len);

#endif

// Telephone numbers through libphonenumber (Debian's libphonenumber-dev), for the connector's
// record gate and the broker's target check. C functions, prefixed, over the C++ library;
// every buffer is the Swift caller's.
#ifndef CUSTOS_PHONENUMBER_H
#define CUSTOS_PHONENUMBER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Writes the E.164 form ("+84912345678") of `text` (`length` bytes of UTF-8, any common
/// spelling: spaces, dashes, brackets, "(0)", 00 or + or no international prefix, a national
/// number) to `out`, parsed with `region` (ISO 3166 alpha-2, e.g. "VN"; NULL or "" for none)
/// as the default region. Returns the length written, 0 when the text is not a valid number
/// (libphonenumber's IsValidNumber), -1 when `capacity` is too small.
int custos_phone_e164(const char *text, size_t length, const char *region, char *out, size_t capacity);

/// Writes the region (ISO 3166 alpha-2) that owns country calling code `code` (84 -> "VN") to
/// `out`. Returns its length, 0 when no region has that code (or it is shared, "001").
int custos_phone_region(int code, char *out, size_t capacity);

#ifdef __cplusplus
}
#endif

#endif

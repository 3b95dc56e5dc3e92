// Thin C wrappers over libphonenumber's PhoneNumberUtil (a thread-safe singleton).
#include "custos_phonenumber.h"

#include <cstring>
#include <string>

#include <phonenumbers/phonenumber.pb.h>
#include <phonenumbers/phonenumberutil.h>

using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

static int copy_out(const std::string &s, char *out, size_t capacity) {
    if (s.size() + 1 > capacity) return -1;
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
    return static_cast<int>(s.size());
}

// Parse and format are documented not to throw; the catch keeps any C++ exception (an
// allocation failure) from crossing into Swift, which cannot unwind it.
extern "C" int custos_phone_e164(const char *text, size_t length, const char *region, char *out, size_t capacity) {
    try {
        const PhoneNumberUtil *util = PhoneNumberUtil::GetInstance();
        PhoneNumber number;
        std::string input(text, length);
        std::string defaultRegion = (region && *region) ? region : "ZZ";
        if (util->Parse(input, defaultRegion, &number) != PhoneNumberUtil::NO_PARSING_ERROR) return 0;
        if (!util->IsValidNumber(number)) return 0;
        std::string formatted;
        util->Format(number, PhoneNumberUtil::E164, &formatted);
        return copy_out(formatted, out, capacity);
    } catch (...) {
        return 0;
    }
}

extern "C" int custos_phone_region(int code, char *out, size_t capacity) {
    try {
        std::string region;
        PhoneNumberUtil::GetInstance()->GetRegionCodeForCountryCode(code, &region);
        if (region.empty() || region == "ZZ" || region == "001") return 0;
        return copy_out(region, out, capacity);
    } catch (...) {
        return 0;
    }
}

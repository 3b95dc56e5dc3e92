"""Schemathesis hooks for ops/fuzz-api (loaded through SCHEMATHESIS_HOOKS).

RFC 3161 time-stamp queries (POST /tsa) are DER bytes: generated bodies are sent as raw
bytes, the way schemathesis sends application/octet-stream.
"""
import schemathesis

schemathesis.serializer.alias("application/timestamp-query", "application/octet-stream")

#ifndef CUSTOS_CRDKAFKA_SHIM_H
#define CUSTOS_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#endif

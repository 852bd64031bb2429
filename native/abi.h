/*
 * The part of Envoy's dynamic modules C ABI this module uses (Envoy 1.40, ABI v0.2.0, which keeps v0.1 modules
 * working), declared here in the module's own words: the types, and the callbacks Envoy exports. The hooks Envoy
 * calls are defined (and exported) where they are implemented.
 */
#ifndef XDS_SERVER_ABI_H
#define XDS_SERVER_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))

typedef struct {
  const char *ptr;
  size_t length;
} envoy_buffer; /* owned by Envoy */

typedef struct {
  const char *ptr;
  size_t length;
} module_buffer; /* owned by the module */

typedef struct {
  const char *key;
  size_t key_length;
  const char *value;
  size_t value_length;
} http_header; /* the ABI's module and Envoy header types have the same layout */

enum header_type { REQUEST_HEADER = 0, RESPONSE_HEADER = 2 };
enum body_type { RECEIVED_REQUEST = 0, BUFFERED_REQUEST = 1, RECEIVED_RESPONSE = 2, BUFFERED_RESPONSE = 3 };
enum headers_status { HEADERS_CONTINUE = 0, HEADERS_STOP_ITERATION = 1 };
enum body_status { BODY_CONTINUE = 0, BODY_STOP_AND_BUFFER = 1 };
enum trailers_status { TRAILERS_CONTINUE = 0 };
enum metadata_source { METADATA_DYNAMIC = 0, METADATA_ROUTE = 1, METADATA_CLUSTER = 2, METADATA_HOST = 3 };
enum attribute_id {
  ATTRIBUTE_RESPONSE_CODE = 15,
  ATTRIBUTE_RESPONSE_CODE_DETAILS = 16,
  ATTRIBUTE_UPSTREAM_ADDRESS = 41,
  ATTRIBUTE_XDS_CLUSTER_NAME = 57,
  ATTRIBUTE_XDS_ROUTE_NAME = 61,
};
enum callout_result { CALLOUT_SUCCESS = 0 };
enum log_level { LOG_INFO = 2, LOG_WARN = 3 };

/* A filter's (per request) */
bool envoy_dynamic_module_callback_http_get_header(void *filter, int type, module_buffer key, envoy_buffer *result,
                                                   size_t index, size_t *count);
bool envoy_dynamic_module_callback_http_set_header(void *filter, int type, module_buffer key, module_buffer value);
size_t envoy_dynamic_module_callback_http_get_body_chunks_size(void *filter, int type);
bool envoy_dynamic_module_callback_http_get_body_chunks(void *filter, int type, envoy_buffer *chunks);
void envoy_dynamic_module_callback_http_clear_route_cache(void *filter);
void envoy_dynamic_module_callback_http_set_dynamic_metadata_number(void *filter, module_buffer ns, module_buffer key,
                                                                    double value);
void envoy_dynamic_module_callback_http_set_dynamic_metadata_string(void *filter, module_buffer ns, module_buffer key,
                                                                    module_buffer value);
bool envoy_dynamic_module_callback_http_get_metadata_string(void *filter, int source, module_buffer ns,
                                                            module_buffer key, envoy_buffer *result);
bool envoy_dynamic_module_callback_http_filter_get_attribute_int(void *filter, int id, uint64_t *result);
bool envoy_dynamic_module_callback_http_filter_get_attribute_string(void *filter, int id, envoy_buffer *result);
/* The stream's timings: 19 int64 values (the first the start, in ns since the epoch), then 19 flags saying which are
 * set (Envoy 1.40's envoy_dynamic_module_type_timing_info_v2, 176 bytes). */
typedef struct {
  int64_t start_time_unix_ns;
  int64_t others[18];
  bool has[19];
} timing_info;
void envoy_dynamic_module_callback_http_get_timing_info(void *filter, timing_info *out);

/* A filter config's (Envoy's main thread, but for the scheduler's commit, which any thread may call) */
void *envoy_dynamic_module_callback_http_filter_config_scheduler_new(void *config);
void envoy_dynamic_module_callback_http_filter_config_scheduler_delete(void *scheduler);
void envoy_dynamic_module_callback_http_filter_config_scheduler_commit(void *scheduler, uint64_t event_id);
int envoy_dynamic_module_callback_http_filter_config_http_callout(void *config, uint64_t *callout_id,
                                                                  module_buffer cluster, http_header *headers,
                                                                  size_t headers_size, module_buffer body,
                                                                  uint64_t timeout_ms);

void envoy_dynamic_module_callback_log(int level, module_buffer message);

#endif

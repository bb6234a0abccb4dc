/* `ccm gateway`: the REST/JSON front of the CallManager gRPC service
 * (SPEC 4). The entry point ccm_cmd_gateway is declared in ccm_commands.h;
 * this header exposes the pieces that tests use on their own. */
#ifndef CCM_GATEWAY_H
#define CCM_GATEWAY_H

#include <jansson.h>
#include <stddef.h>

/* Converts a YAML document (one document, core schema: plain scalars become
 * null, booleans, integers or reals; quoted ones stay strings) into JSON.
 * Returns a new reference owned by the caller, or NULL with a one-line
 * reason (including the line number when the YAML is malformed) in err. */
json_t *ccm_gateway_yaml_to_json(const char *text, size_t len, char *err, size_t errlen);

/* Loads the OpenAPI document: the file named by CCM_OPENAPI_PATH when set,
 * else the copy embedded at build time (when built with it), else
 * docs/openapi.yaml in the working directory, else under CCM_SOURCE_DIR.
 * Returns a new JSON reference owned by the caller, or NULL with the reason
 * in err. */
json_t *ccm_gateway_openapi_load(char *err, size_t errlen);

#endif

/* The gRPC server API of userstatus-query: Centrifugo's CentrifugoApi service (UpdateUserStatus,
 * GetUserStatus, DeleteUserStatus, Batch) on the gRPC C core, messages by protobuf-c
 * (schemas/centrifugo_api.proto). A thin front end over the command core (core.h). */
#ifndef US_GRPC_H
#define US_GRPC_H

#include "config.h"
#include "core.h"

#include <stddef.h>

typedef struct us_grpc us_grpc;
typedef struct us_reader us_reader;

/* Checks the grpc_api settings without starting anything: error_mode, TLS files, and a key unless
 * api_insecure. Returns 0, or -1 with err naming the key. */
int us_grpc_check_config(const us_config *cfg, char *err, size_t errlen);

/* Starts serving grpc_api.address:grpc_api.port (insecure or TLS), one completion queue served by
 * query.threads threads; commands run through core, which must outlive the server, as must the
 * reader the queue threads defer their reads to. Returns NULL with err set. */
us_grpc *us_grpc_start(const us_config *cfg, us_core *core, us_reader *reader, char *err,
                       size_t errlen);

/* Shuts the server down: no new calls; the answers in flight get up to a second to reach their
 * clients, then what is left is cancelled; waits until every call the core still runs has
 * completed (bounded by the core's deadlines: quiesce the core first, so that every call is
 * answered and the stop is immediate), drains the completion queue and frees. Accepts NULL. */
void us_grpc_stop(us_grpc *g);

#endif

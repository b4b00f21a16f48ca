/* The status page of userstatus-query: a small static page (HTML, JS, CSS) under /status that shows
 * users as online / away / offline, built on the public API. Off unless query.status_page is on. */
#ifndef US_STATUS_PAGE_H
#define US_STATUS_PAGE_H

#include "config.h"

#include <microhttpd.h>

#define US_STATUS_PAGE_PATH "/status" /* The page; its files are under US_STATUS_PAGE_PATH "/". */

/* Returns 1 when url is the page or one of its files (whether or not the page is enabled). */
int us_status_page_owns(const char *url);

/* Answers a request for a url that us_status_page_owns: the embedded file, or settings.json (the
 * status rules of cfg), with its Content-Type, Cache-Control: no-cache and a strict
 * Content-Security-Policy; 404 when query.status_page is off or no such file exists; 405 for a
 * method other than GET or HEAD. */
enum MHD_Result us_status_page_send(const us_config *cfg, struct MHD_Connection *conn,
                                    const char *url, const char *method);

#endif

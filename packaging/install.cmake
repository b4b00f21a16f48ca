# Install rules and the Debian package (included by the top-level CMakeLists.txt).
#
#   cmake --install build [--prefix P]      or      DESTDIR=/scratch cmake --install build
#   cd build && cpack -G DEB                 -> userstatus_<version>_<arch>.deb
#
# Layout (GNUInstallDirs, relative to the prefix unless said otherwise):
#   bin/userstatus-query, bin/userstatus-worker, bin/userstatus-notify
#   lib/systemd/system/userstatus-query.service, userstatus-worker@.service,
#                      userstatus-notify.service                          (USERSTATUS_SYSTEMD_UNIT_DIR)
#   <sysconfdir>/userstatus/config.json     default configuration; /etc/userstatus with prefix /usr
#   share/doc/userstatus/                   README, events schema, choices, OpenAPI, examples/*.json
#   share/userstatus/deploy/                Grafana dashboard, Prometheus config and alert rules
# The units name the binaries and the configuration by their full paths under the configured prefix,
# so configure with -DCMAKE_INSTALL_PREFIX=/usr for a distribution-style package.
include(GNUInstallDirs)

set(USERSTATUS_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING
    "Where systemd units are installed (relative to the prefix, or absolute)")

# /etc/userstatus for prefix /usr (GNUInstallDirs' rule), <prefix>/etc/userstatus otherwise; relative
# when it is under the prefix, so that `cmake --install --prefix` moves it along.
if(CMAKE_INSTALL_FULL_SYSCONFDIR STREQUAL "${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SYSCONFDIR}")
  set(US_CONFIG_DEST "${CMAKE_INSTALL_SYSCONFDIR}/userstatus")
else()
  set(US_CONFIG_DEST "${CMAKE_INSTALL_FULL_SYSCONFDIR}/userstatus")
endif()
set(US_CONFIG_FILE "${CMAKE_INSTALL_FULL_SYSCONFDIR}/userstatus/config.json")
set(US_BIN_DIR "${CMAKE_INSTALL_FULL_BINDIR}")
set(US_DOC_DIR "${CMAKE_INSTALL_FULL_DOCDIR}")

install(TARGETS userstatus-query userstatus-worker userstatus-notify RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

foreach(unit userstatus-query.service userstatus-worker@.service userstatus-notify.service)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/systemd/${unit}.in
                 ${PROJECT_BINARY_DIR}/packaging/systemd/${unit} @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/packaging/systemd/${unit} DESTINATION ${USERSTATUS_SYSTEMD_UNIT_DIR})
endforeach()

# The configuration may hold the API key and Redis passwords: root-only (the units pass it to the
# services as a credential).
install(FILES ${PROJECT_SOURCE_DIR}/packaging/config.json DESTINATION ${US_CONFIG_DEST}
        PERMISSIONS OWNER_READ OWNER_WRITE)

install(FILES README.md schemas/events.md schemas/changes.md schemas/openapi.yaml docs/choices.md docs/metrics.md docs/install.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY schemas/examples/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples FILES_MATCHING PATTERN "*.json")
install(DIRECTORY deploy/ DESTINATION ${CMAKE_INSTALL_DATADIR}/userstatus/deploy)

# --- Debian package -----------------------------------------------------------------------------------
set(CPACK_PACKAGE_NAME "userstatus")
set(CPACK_PACKAGE_VENDOR "userstatus")
set(CPACK_PACKAGE_CONTACT "userstatus maintainers <userstatus@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "User status service (last active / last online) over Kafka and Redis")
set(CPACK_PACKAGE_DESCRIPTION
    "userstatus-worker consumes user status events from Kafka into Redis; userstatus-query serves a\
 Centrifugo-compatible HTTP API over them; userstatus-notify delivers status changes to webhooks and\
 Centrifugo channels. Includes hardened systemd units.")
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)  # Depends: from the binaries' shared libraries (dpkg-shlibdeps)
# The configuration is a conffile: an upgrade keeps the administrator's edits.
file(WRITE ${PROJECT_BINARY_DIR}/packaging/conffiles "${US_CONFIG_FILE}\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA "${PROJECT_BINARY_DIR}/packaging/conffiles")
set(CPACK_STRIP_FILES ON)
include(CPack)

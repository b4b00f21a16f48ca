# Writes the bytes of IN as a C array NAME (and NAME_len) into OUT: cmake -DIN=... -DOUT=... -DNAME=...
# -P embed.cmake. Used for the descriptor set that gRPC server reflection serves.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
get_filename_component(from "${IN}" NAME)
file(WRITE "${OUT}"
     "/* Generated at build time from ${from}; do not edit. */\n#include <stddef.h>\n\n"
     "const unsigned char ${NAME}[] = {${body}};\nconst size_t ${NAME}_len = sizeof(${NAME});\n")

# Writes the bytes of IN as a C array named SYMBOL (plus SYMBOL_len) to OUT.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" body "${body}")
file(WRITE ${OUT} "#include <stddef.h>\nconst unsigned char ${SYMBOL}[] = {\n${body}\n};\nconst size_t ${SYMBOL}_len = ${len};\n")

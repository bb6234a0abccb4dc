# protobuf-c generation of ccm's protos and the gRPC ones it serves, shared
# by the top-level CMakeLists.txt and tests/fuzz/CMakeLists.txt.
# In:  CCM_ROOT (the repository), GEN_DIR (where the code goes), PROTOC_C.
# Out: PROTO_DIR, GRPC_PROTO_DIR, CCM_PROTOS, EXT_PROTOS, and PROTO_SRCS (the
#      generated .pb-c.c files, each with a custom command producing it).
set(GRPC_PROTO_DIR /usr/share/grpc-proto)
set(PROTO_DIR ${CCM_ROOT}/proto)
set(CCM_PROTOS
  ${PROTO_DIR}/callmanager/v1/call_manager.proto
  ${PROTO_DIR}/callmanager/events/v1/events.proto)
set(EXT_PROTOS
  ${GRPC_PROTO_DIR}/grpc/health/v1/health.proto
  ${GRPC_PROTO_DIR}/grpc/reflection/v1alpha/reflection.proto)

# ccm_proto_generate(<import dir> <protos...>): appends to PROTO_SRCS.
function(ccm_proto_generate import_dir)
  set(srcs ${PROTO_SRCS})
  foreach(p ${ARGN})
    file(RELATIVE_PATH rel ${import_dir} ${p})
    string(REGEX REPLACE "\\.proto$" "" base ${rel})
    list(APPEND srcs ${GEN_DIR}/${base}.pb-c.c)
    add_custom_command(
      OUTPUT ${GEN_DIR}/${base}.pb-c.c ${GEN_DIR}/${base}.pb-c.h
      COMMAND ${CMAKE_COMMAND} -E make_directory ${GEN_DIR}
      COMMAND ${PROTOC_C} -I${import_dir} --c_out=${GEN_DIR} ${p}
      DEPENDS ${p} VERBATIM)
  endforeach()
  set(PROTO_SRCS ${srcs} PARENT_SCOPE)
endfunction()

set(PROTO_SRCS)
ccm_proto_generate(${PROTO_DIR} ${CCM_PROTOS})
ccm_proto_generate(${GRPC_PROTO_DIR} ${EXT_PROTOS})

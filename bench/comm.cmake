# bench/comm.cmake - comm/ benchmark and rank-failure experiment (not tests).
# Included from the top-level CMakeLists.txt with:
#   include(${CMAKE_SOURCE_DIR}/bench/comm.cmake OPTIONAL)
add_executable(bench_comm ${CMAKE_SOURCE_DIR}/bench/bench_comm.c)
target_link_libraries(bench_comm PRIVATE lockstep_comm ${BLAS_LIBRARIES})
add_executable(comm_killme ${CMAKE_SOURCE_DIR}/bench/comm_killme.c)
target_link_libraries(comm_killme PRIVATE lockstep_comm)

# tests/fuzz/fuzz.cmake - the fuzz harnesses of tests/fuzz (fuzz_<name>.c).
# Included from CMakeLists.txt BEFORE the library targets (so that LOCKSTEP_FUZZ can
# instrument them):
#   include(${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz.cmake OPTIONAL)
# (scripts/fuzz also works without that line: it passes this file as
# CMAKE_PROJECT_lockstep_INCLUDE, which CMake includes right after project(); the guard
# below makes a double include harmless.)
#
# LOCKSTEP_FUZZ=ON (needs CMAKE_C_COMPILER=clang, a build directory of its own, e.g.
# build-fuzz; scripts/fuzz does it): everything is compiled with
# -fsanitize=fuzzer-no-link,address,undefined, each harness is linked with libFuzzer as
# build-fuzz/fuzz_<name>, and CTest gets, per harness, a replay of its seed corpus and
# regression inputs (fuzz_<name>_replay) and a bounded fuzzing run of
# LOCKSTEP_FUZZ_SECONDS (default 20) seconds (fuzz_<name>_run), label "fuzz".
# Otherwise (any compiler): each harness is linked with tests/fuzz/replay_main.c as
# replay_<name>, and CTest replays the seed corpus and regression inputs
# (fuzz_replay_<name>, label "unit"), so every past finding stays fixed in the ordinary
# suite, also under LOCKSTEP_SANITIZE.
include_guard(GLOBAL)
option(LOCKSTEP_FUZZ "Build the libFuzzer harnesses of tests/fuzz (needs clang)" OFF)
set(LOCKSTEP_FUZZ_SECONDS 20 CACHE STRING "seconds of each bounded fuzzing run in CTest")
set(LOCKSTEP_FUZZ_HARNESSES config corpus vocab shard ckpt)
set(LOCKSTEP_FUZZ_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz)

if(LOCKSTEP_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "LOCKSTEP_FUZZ=ON needs clang: cmake -DCMAKE_C_COMPILER=clang -DLOCKSTEP_FUZZ=ON")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
                      -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=address,undefined)
endif()

foreach(h ${LOCKSTEP_FUZZ_HARNESSES})
  set(inputs ${LOCKSTEP_FUZZ_DIR}/corpus/${h})
  if(EXISTS ${LOCKSTEP_FUZZ_DIR}/regress/${h})
    list(APPEND inputs ${LOCKSTEP_FUZZ_DIR}/regress/${h})
  endif()
  if(LOCKSTEP_FUZZ)
    add_executable(fuzz_${h} ${LOCKSTEP_FUZZ_DIR}/fuzz_${h}.c)
    target_link_libraries(fuzz_${h} PRIVATE lockstep)
    target_link_options(fuzz_${h} PRIVATE -fsanitize=fuzzer)
    add_test(NAME fuzz_${h}_replay COMMAND fuzz_${h} -runs=0 ${inputs}
             WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
    # new inputs go to a scratch corpus in the build directory, never into the sources
    file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-work/${h}/corpus)
    add_test(NAME fuzz_${h}_run
             COMMAND fuzz_${h} -max_total_time=${LOCKSTEP_FUZZ_SECONDS} -timeout=25
                     -rss_limit_mb=2048 -print_final_stats=1 -close_fd_mask=3
                     -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz-work/${h}/
                     ${CMAKE_BINARY_DIR}/fuzz-work/${h}/corpus ${inputs}
             WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
    set_tests_properties(fuzz_${h}_replay fuzz_${h}_run PROPERTIES LABELS fuzz TIMEOUT 300
      ENVIRONMENT "OPENBLAS_NUM_THREADS=1;TMPDIR=/dev/shm;ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0;LSAN_OPTIONS=suppressions=${LOCKSTEP_FUZZ_DIR}/lsan.supp")
  else()
    add_executable(replay_${h} ${LOCKSTEP_FUZZ_DIR}/fuzz_${h}.c ${LOCKSTEP_FUZZ_DIR}/replay_main.c)
    target_link_libraries(replay_${h} PRIVATE lockstep)
    if(LOCKSTEP_SANITIZE) # also when this file is included before the sanitizer options
      target_compile_options(replay_${h} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer)
      target_link_options(replay_${h} PRIVATE -fsanitize=address,undefined)
    endif()
    add_test(NAME fuzz_replay_${h} COMMAND replay_${h} ${inputs}
             WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
    set_tests_properties(fuzz_replay_${h} PROPERTIES LABELS unit TIMEOUT 300)
  endif()
endforeach()

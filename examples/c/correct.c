/* Corrects one answer through libaligner.so, streaming the correction as it is written.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -I include examples/c/correct.c -L target/release -laligner \
 *      -Wl,-rpath,'$ORIGIN' -o target/release/correct-c
 *   target/release/correct-c MODEL_DIR "Question?" "Answer to correct."
 *
 * Prints the streamed text, then one line "finish=<reason> prompt=<n> completion=<n>", then
 * the model's info (JSON). Exits 1 with "error: ..." on stderr when a call fails, and shows
 * that invalid UTF-8 is an error, not undefined behaviour.
 */
#include <stdio.h>
#include <string.h>

#include "aligner.h"

static bool print_piece(const char *piece, size_t len, void *user_data) {
    size_t *pieces = user_data;
    *pieces += 1;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true; /* false would cancel */
}

static int fail(const char *what) {
    fprintf(stderr, "error: %s: %s\n", what, aligner_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR QUESTION ANSWER\n", argv[0]);
        return 2;
    }
    AlignerLoadOptions load = aligner_load_options_default();
    load.threads = 2;
    AlignerModel *model = NULL;
    if (aligner_model_load(argv[1], &load, &model) != ALIGNER_STATUS_OK) {
        return fail("load");
    }

    AlignerGenOptions gen = aligner_gen_options_default();
    gen.max_new_tokens = 48;
    AlignerResult *result = NULL;
    size_t pieces = 0;
    AlignerStatus status =
        aligner_correct(model, argv[2], ALIGNER_NUL_TERMINATED, argv[3], strlen(argv[3]), &gen,
                        print_piece, &pieces, &result);
    if (status != ALIGNER_STATUS_OK) {
        aligner_model_free(model);
        return fail("correct");
    }
    size_t len = 0;
    const char *text = aligner_result_text(result, &len);
    printf("\nfinish=%s prompt=%zu completion=%zu pieces=%zu bytes=%zu\n",
           aligner_result_finish_reason(result), aligner_result_prompt_tokens(result),
           aligner_result_completion_tokens(result), pieces, len);
    if (strlen(text) != len) {
        fprintf(stderr, "error: the result's length disagrees with its text\n");
        return 1;
    }
    aligner_result_free(result);

    char *info = NULL;
    if (aligner_model_info(model, &info) != ALIGNER_STATUS_OK) {
        return fail("info");
    }
    printf("info=%s\n", info);
    aligner_string_free(info);

    /* Invalid UTF-8 is refused with a status and a message, never read as text. */
    const char bad[] = {'Q', (char)0xff, '?'};
    status = aligner_correct(model, bad, sizeof bad, "A.", ALIGNER_NUL_TERMINATED, NULL, NULL, NULL,
                             &result);
    printf("invalid_utf8_status=%d result_is_null=%d last_error=%s\n", (int)status,
           result == NULL, aligner_last_error());

    aligner_model_free(model);
    return status == ALIGNER_STATUS_INVALID_ARGUMENT ? 0 : 1;
}

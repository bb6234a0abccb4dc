/* The one executable: every subcommand of SPEC section 2. */
#include "ccm_cli.h"

int main(int argc, char **argv) { return ccm_cli_run(argc, argv); }

/* Subcommands whose implementation has not landed yet: they say so plainly
 * and fail, rather than pretending to run. */
#include <stdio.h>

#include "ccm_cli.h"
#include "ccm_commands.h"

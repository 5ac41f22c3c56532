#include "ckeel.h"

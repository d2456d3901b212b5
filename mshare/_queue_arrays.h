/* numpy's C API for the queue's views, fetched when the first view is made (not when the
 * module is imported: mshare works without numpy, and only its arrays need it). */
#ifndef MSHARE_QUEUE_ARRAYS_H
#define MSHARE_QUEUE_ARRAYS_H

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
/* Built with numpy 2 headers, runs with any numpy the package accepts (>= 1.22). */
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

#endif

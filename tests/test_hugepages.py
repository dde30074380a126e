"""course_lib.hugepages: huge-page memory and the checks that it really is in huge pages.

Two tests depend on the machine's transparent-huge-page settings and skip, saying so, where the
setting they need is absent."""

import mmap

import pytest
import torch

from course_lib import hugepages

THP = hugepages.thp_mode()


@pytest.mark.parametrize("shape", [(3, 5), (0, 7), (2, 2**20 + 3)])
def test_empty_huge_pages_is_a_writable_aligned_tensor(shape):
    t = hugepages.empty_huge_pages(*shape, dtype=torch.bfloat16)
    assert t.shape == shape and t.dtype == torch.bfloat16 and t.is_contiguous()
    t.fill_(1.5)
    assert bool((t == 1.5).all())
    if t.numel() and hasattr(mmap, "MADV_HUGEPAGE"):
        assert t.data_ptr() % (2 * 2**20) == 0  # starts on a 2 MiB page


@pytest.mark.skipif(THP not in ("always", "madvise"),
                    reason=f"machine-dependent: transparent huge pages are {THP!r} here, "
                           "need 'always' or 'madvise'")
def test_empty_huge_pages_really_gets_huge_pages_where_linux_offers_them():
    # A shared anonymous mapping (Python's mmap default) stays in 4 KiB pages whatever madvise
    # says (unless shmem_enabled allows huge pages): the mapping must be private.
    t = hugepages.empty_huge_pages(8 * 2**20 // 4)
    t.fill_(1.0)  # the pages exist once touched
    assert hugepages.huge_page_share(t) > 0.5


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    assert hugepages.thp_mode(folder=tmp_path) == "madvise"
    assert hugepages.thp_mode("shmem_enabled", folder=tmp_path) is None  # no such file


def test_huge_page_share_of_an_empty_tensor_is_zero():
    if hugepages.huge_page_share(torch.ones(1)) is None:
        pytest.skip("machine-dependent: no /proc/self/smaps here")
    assert hugepages.huge_page_share(torch.ones(0)) == 0.0


@pytest.mark.skipif(THP != "madvise",
                    reason=f"machine-dependent: transparent huge pages are {THP!r} here; only "
                           "under 'madvise' does memory without the advice stay in 4 KiB pages")
def test_memory_without_the_advice_is_not_in_huge_pages():
    # A fresh private mapping, not malloc: a malloc'ed tensor was once seen in huge pages in a
    # full test run (never alone), as the allocator may reuse memory an earlier allocation had
    # advised; a new mapping does not depend on what ran before it in the process.
    buf = mmap.mmap(-1, 16 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    t = torch.frombuffer(buf, dtype=torch.float32)
    t.fill_(1.0)  # the pages exist once touched
    assert hugepages.huge_page_share(t) == 0.0

PAGE_SIZE: int

class Mapping:
    addr: int
    length: int
    writable: bool
    exports: int
    mapped: bool
    label: object
    @staticmethod
    def map_fixed(fd: int, addr: int, length: int, writable: bool, label: object = ...) -> Mapping: ...
    def remap_writable(self, fd: int) -> None: ...
    def populate(self, page_size: int, write: bool | None = ...) -> None: ...
    def advise_hugepages(self) -> None: ...
    def unmap(self) -> None: ...

class MappedBuffer:
    length: int
    readonly: bool
    def __init__(self, mapping: Mapping, length: int, readonly: bool) -> None: ...

from .rod_align import RoDAlign, RoDAlignAvg, RoDAlignMax

__all__ = ["RoDAlign", "RoDAlignAvg", "RoDAlignMax"]
